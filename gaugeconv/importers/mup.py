"""Take over a model and optimizer set up with microsoft/mup (THEORY.md sections 2, 3, 6).

mup marks each parameter with an ``infshape`` (which dimensions are widths, their base sizes)
and scales in its optimizers, per tensor, with width_mult = n / n0 of its main width dimension:

* MuAdam/MuAdamW: matrix-like (two width dims) lr / width_mult, others lr; weight decay
  * width_mult on matrix-like unless ``decoupled_wd`` (so lr*wd is the same for every tensor:
  gaugeconv's "independent" weight-decay scaling, with AdamW's decoupled decay);
* MuSGD: vector-like (one width dim) lr * width_mult, matrix-like lr / (fan_in_mult /
  fan_out_mult), others lr; weight decay inversely (again lr*wd fixed);
* MuReadout / MuSharedReadout multiply their input by output_mult / width_mult in their own
  forward: that factor is the readout weight's multiplier (its bias is not scaled), recorded as
  the tensor's ``builtin`` factor so that gaugeconv's hooks apply only m / builtin;
* ``set_base_shapes(rescale_params=True)`` multiplies the readout's stored weight (and bias) by
  sqrt(width_mult) after torch's default init, which keeps the stored std constant: with the
  1/width_mult multiplier that is exactly muP's readout init 1/(alpha^2 fan_in) up to a constant.

Roles follow from the infshapes: a dense or convolution weight is hidden when both its fan-in
and fan-out are widths, readin when only fan-out is, readout when only fan-in is, fixed when
neither (a transposed convolution's fan-in is its dimension 0); embeddings are readin with
fan_in 1. Any other tensor (vectors, nn.MultiheadAttention-style ``in_proj_weight``,
``bias_k``/``bias_v``, bare position tables) takes its role from its infshape alone, as mup's
optimizers treat it (``mup_infshape.py``): two width dimensions hidden, one readin with fan_in 1
(vector-like), none fixed. The result is
richness 1/2 in a Custom gauge whose multipliers are mup's, with per-tensor constants (base
widths, fan-ins, output_mult, 1/sqrt(3) of torch's default init) that do not scale with width.

Tensors mup's optimizer does not train (left out of it, or in a group with lr 0) are taken over
as frozen: they stay out of (or at lr 0 in) the new optimizer, and their constants are those
mup's optimizer would give them from the base lr (``mup_infshape.mup_lr_wd``).

Adam's eps: mup applies eps to each stored gradient, so the readout's effective eps grows like
width_mult (its stored gradient is m = output_mult/width_mult times the effective one).
``eps_convention="stored"`` (default) reproduces that exactly through eps_const = 1/m;
``"effective"`` applies eps in effective space, as gaugeconv does everywhere, which is the
width-consistent choice (THEORY.md section 2) but changes the trajectory of entries whose
gradient is near eps.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from ..errors import GaugeError
from ..gauges import Gauge
from ..model import tensor_uses
from ..optim_rules import DEFAULT_REGISTRY, OptimizerRule
from ..richness import Family, Richness, Role, target
from ..spec import TensorSpec
from .core import (
    Imported,
    StoredHypers,
    _gauged,
    check_reproduces,
    copy_optimizer,
    import_parameterization,
    init_kwargs,
    parameter_names,
    stored_hypers_of,
)
from .group_hypers import group_hypers_of
from .mup_infshape import infshape_of, mup_lr_wd, role_from_infshape

__all__ = ["from_mup", "mup_specs"]

_INIT_STD_FACTOR = 1.0 / math.sqrt(3.0)  # torch's default kaiming_uniform(a=sqrt 5): 1/sqrt(3 fan_in)


def _readouts(model: nn.Module) -> dict[str, nn.Module]:
    """Stored name of each MuReadout/MuSharedReadout weight -> the readout module."""
    from mup import MuReadout

    uses = tensor_uses(model)
    out = {}
    for path, module in model.named_modules():
        if isinstance(module, MuReadout):
            out[uses[f"{path}.weight" if path else "weight"]] = module
    return out


def _model_width(model: nn.Module, readouts: dict[str, nn.Module]) -> int:
    """The reference width n: the readout's fan-in, else the commonest width dimension."""
    params = dict(model.named_parameters())
    for name in readouts:
        return int(params[name].shape[-1])
    dims = Counter(d.dim for p in params.values() for d in getattr(p, "infshape", ()) if d.isinf())
    if not dims:
        raise GaugeError("no parameter has a width dimension: nothing for muP to scale")
    return int(dims.most_common(1)[0][0])


def mup_specs(
    model: nn.Module, tied_role: str = "readout"
) -> tuple[list[TensorSpec], dict[str, float], dict[str, float]]:
    """TensorSpecs (role, fan_in, init, builtin), mup's multiplier of every stored tensor and
    the effective init std of mup's default path (torch's init, then set_base_shapes)."""
    readouts = _readouts(model)
    uses = tensor_uses(model)
    tied = {name for path, name in uses.items() if path != name}
    specs, multipliers, init_stds = [], {}, {}
    for name, p in model.named_parameters():
        inf = infshape_of(p, name)
        module_path, _, attr = name.rpartition(".")
        module = model.get_submodule(module_path)
        builtin, init = 1.0, "keep"
        init_std = None  # effective std of mup's default init
        if name in readouts and (name not in tied or tied_role == "readout"):
            ro = readouts[name]
            role, fan_in = Role.READOUT, int(p.shape[1])
            builtin = float(ro.output_mult) / float(ro.width_mult())
            if getattr(ro, "readout_zero_init", False):
                init = "zeros"
            elif not isinstance(module, nn.Embedding):
                init = "normal"
                rescaled = getattr(ro, "_has_rescaled_params", False)
                init_std = (_INIT_STD_FACTOR / math.sqrt(fan_in) * builtin
                            * (math.sqrt(ro.width_mult()) if rescaled else 1.0))
        elif isinstance(module, nn.Embedding) and attr == "weight":
            role, fan_in = Role.READIN, 1
            init, init_std = "normal", 1.0
        elif (p.ndim >= 2 and attr == "weight"
              and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))):
            transposed = bool(getattr(module, "transposed", False))  # [in, out/groups, k...]
            out_dim, in_dim = (1, 0) if transposed else (0, 1)
            out_inf, in_inf = inf[out_dim].isinf(), inf[in_dim].isinf()
            role = (Role.HIDDEN if out_inf and in_inf else Role.READIN if out_inf
                    else Role.READOUT if in_inf else Role.FIXED)
            inputs = p.shape[0] // module.groups if transposed else p.shape[1]
            fan_in = int(inputs * math.prod(p.shape[2:]))
            if role is not Role.FIXED:
                init, init_std = "normal", _INIT_STD_FACTOR / math.sqrt(fan_in)
        else:  # vectors and tensors no module rule covers: mup's optimizers go by infshape
            role, fan_in = role_from_infshape(inf, tuple(p.shape), name)
        specs.append(TensorSpec(name, role, fan_in, tuple(p.shape), init, builtin=builtin))
        multipliers[name] = builtin
        if init_std is not None:
            init_stds[name] = init_std
    return specs, multipliers, init_stds


def from_mup(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    gauge: Gauge | str | None = None,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    eps: float | None = None,
    eps_convention: str = "stored",
    wd_scaling: str | None = None,
    gamma: float = 1.0,
    width: int | None = None,
    tied_role: str = "readout",
) -> Imported:
    """Take over a mup model (set_base_shapes done) and its MuAdam/MuAdamW/MuSGD optimizer.

    Returns the same module with gaugeconv's multipliers (none are needed in mup's own gauge:
    MuReadout keeps scaling itself) and a new optimizer of the same class with one group per
    tensor and the state copied, which continues the same trajectory; with ``gauge`` the model
    and optimizer are then converted to it (stp, mup, rescaling...). The base lr, weight decay
    and eps default to the optimizer's (the values passed to MuAdam/MuSGD). mup's model and
    optimizer are left as they were (the new optimizer has its own state tensors).

    ``imported.make_optimizer(cls)`` builds a fresh optimizer with every group's own betas,
    momentum... (``group_hypers.py``); ``imported.clip_grad_norm_(max_norm)`` clips as mup's
    ``clip_grad_norm_`` does, in any gauge; tensors mup does not train are ``imported.frozen``.
    """
    rule = DEFAULT_REGISTRY.rule_for(optimizer)
    family: Family = rule.family
    eta = float(optimizer.defaults["lr"] if lr is None else lr)
    wd = float(optimizer.defaults.get("weight_decay", 0.0) if weight_decay is None
               else weight_decay)
    eps_base = None
    if rule.eps_keys:
        eps_base = float(optimizer.defaults.get(rule.eps_keys[0]) if eps is None else eps)
    specs, multipliers, init_stds = mup_specs(model, tied_role)
    n = width or _model_width(model, _readouts(model))
    rich = Richness(0.5, gamma)
    fixed_specs = []
    for s in specs:  # init constant: mup's effective init std / the table's sqrt(v)
        v = target(s.role, s.fan_in, n, rich, family).variance
        if s.name in init_stds and v is not None:
            s = dataclasses.replace(s, init_const=init_stds[s.name] / math.sqrt(v))
        fixed_specs.append(s)
    names = parameter_names(model)
    stored, frozen = _with_frozen(model, optimizer, stored_hypers_of(optimizer, names, rule), rule)
    param, no_decay, notes = import_parameterization(
        fixed_specs, multipliers, stored, rich, family, n, eta, wd, eps_base, eps_convention,
        wd_scaling, gauge_name="mup-library",
    )
    check_reproduces(param, stored, eta, wd, eps_base, eps_convention)
    if frozen:
        notes.append(
            f"not trained by the source optimizer (left out, or lr 0): {sorted(frozen)}; they "
            "stay fixed, their constants are those mup's rule gives them"
        )
    gauged = _gauged(model, param)
    new_opt = copy_optimizer(gauged, optimizer, eps_base, eps_convention, rule)
    hyper: dict[str, Any] = {k: v for k, v in init_kwargs(type(optimizer), optimizer.defaults).items()
                             if k not in ("lr", "weight_decay", *rule.eps_keys)}
    imported = Imported(
        gauged, new_opt, eta, wd, eps_base, no_decay, hyper, notes,
        group_hypers=group_hypers_of(optimizer, names, rule), frozen=frozenset(frozen),
        source_multipliers=dict(param.multipliers), source_class=type(optimizer),
    )
    if gauge is not None:
        gauged.convert(gauge, optimizer=new_opt)
    return imported


def _with_frozen(
    model: nn.Module, optimizer: torch.optim.Optimizer, stored: dict[str, StoredHypers],
    rule: OptimizerRule,
) -> tuple[dict[str, StoredHypers], set[str]]:
    """Stored hyperparameters for every tensor, and the names of those mup does not train.

    A tensor in no group, or in a group with lr 0, gets the lr (and, in no group, the weight
    decay and eps) that mup's optimizer would give it from its defaults (``mup_lr_wd``): its
    constants are then those of a trained tensor of its kind, and it stays fixed.
    """
    defaults = optimizer.defaults
    eta, wd = float(defaults["lr"]), float(defaults.get("weight_decay", 0.0) or 0.0)
    eps = defaults.get(rule.eps_keys[0]) if rule.eps_keys else None
    out, frozen = dict(stored), set()
    for name, p in model.named_parameters():
        have = stored.get(name)
        if have is not None and have.lr != 0:
            continue
        frozen.add(name)
        lr, decay = mup_lr_wd(infshape_of(p, name), rule.family, eta, wd, name)
        out[name] = (StoredHypers(lr, decay, rule.weight_decay_mode(defaults),
                                  None if eps is None else float(eps))
                     if have is None else dataclasses.replace(have, lr=lr))
    return out, frozen
