"""The conventions of mupify (D. Karkada's reference code) at its five named points.

mupify marks the first dense/conv layer readin, the last readout and the others hidden, takes
the width n as the largest hidden width and the activity alpha = sqrt(n) (mup, mup-lr, mfp) or
1 (ntp, ntp-lr), and gives each layer, with q = alpha^2/fan_in (readin, hidden) or 1/fan_in
(readout), a multiplier g, an SGD learning-rate factor and an init std s with
(g s alpha)^2 = q and lr = q / g^2: exactly THEORY.md section 2's targets in the gauge of the
named point (ntp: rescaling at r = 0, ntp-lr: STP at r = 0, mup: muP at r = 1/2, mup-lr: STP at
r = 1/2, mfp: rescaling at r = 1/2), so its weights need no constants.

Biases differ on purpose. mupify multiplies a layer's whole output by g, so a bias gets its
layer's multiplier, learning rate and init std: effectively the layer's role and fan_in. Its
hidden biases then take steps of order 1/n in muP and stop learning as the width grows;
gaugeconv gives biases the readin role with fan_in 1 (THEORY.md sections 1 and 6: order-one
steps). ``biases="mupify"`` reproduces mupify's biases (role and fan_in of their layer),
``biases="gaugeconv"`` uses gaugeconv's. mupify's weight decay is one stored value for every
tensor: its effective decay wd/g^2 depends on the gauge, carried as per-tensor wd_const.
mupify's ReLU multiplier sqrt(2) is part of the architecture: build the model with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import GaugeError, RoleError
from ..gauges import NAMED_POINTS, resolve_point
from ..optim_rules import DEFAULT_REGISTRY
from ..plan import Parameterization
from ..richness import Family, Richness, Role
from ..spec import TensorSpec
from .core import Imported, StoredHypers, _gauged, import_parameterization

__all__ = ["from_mupify", "mupify_layers"]

BIAS_CONVENTIONS = ("mupify", "gaugeconv")


def mupify_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module, Role]], int]:
    """mupify's anatomy: (path, layer, role) in module order, and the width n."""
    layers = []
    for path, module in model.named_modules():
        if "forward" in vars(module) or hasattr(module, "_multiplier"):
            raise GaugeError(
                f"{path or 'the model'!r} was already mupified (its forward is replaced on the "
                "instance, multipliers would apply twice): pass the plain model"
            )
        if getattr(module, "weight", None) is None or not isinstance(module.weight, nn.Parameter):
            continue
        if type(module) not in (nn.Linear, nn.Conv2d):
            raise RoleError(
                f"{path!r} is a {type(module).__name__}: mupify's conventions cover nn.Linear "
                "and nn.Conv2d only"
            )
        layers.append((path, module))
    if len(layers) < 2:
        raise RoleError("mupify needs at least two dense/conv layers (a readin and a readout)")
    widths = [int(m.weight.shape[0]) for _, m in layers[:-1]]
    roles = [Role.READIN] + [Role.HIDDEN] * (len(layers) - 2) + [Role.READOUT]
    return [(p, m, r) for (p, m), r in zip(layers, roles)], max(widths)


def _specs(model: nn.Module, biases: str) -> tuple[list[TensorSpec], int]:
    layers, width = mupify_layers(model)
    specs = []
    covered = set()
    for path, layer, role in layers:
        fan_in = int(math.prod(layer.weight.shape[1:]))
        prefix = f"{path}." if path else ""
        specs.append(TensorSpec(f"{prefix}weight", role, fan_in, tuple(layer.weight.shape)))
        covered.add(f"{prefix}weight")
        if layer.bias is not None:
            name = f"{prefix}bias"
            if biases == "mupify":
                spec = TensorSpec(name, role, fan_in, tuple(layer.bias.shape), "normal")
            else:
                bias_role = Role.FIXED if role is Role.READOUT else Role.READIN
                spec = TensorSpec(name, bias_role, 1, tuple(layer.bias.shape), "zeros")
            specs.append(spec)
            covered.add(name)
    other = [n for n, _ in model.named_parameters() if n not in covered]
    if other:
        raise RoleError(f"mupify's conventions give no role to {other[:5]}")
    return specs, width


def from_mupify(
    model: nn.Module,
    param: str = "mup",
    optimizer: torch.optim.Optimizer | None = None,
    biases: str = "mupify",
    seed: int | None = None,
) -> Imported:
    """``model`` (plain, not yet mupified) in mupify's parameterization ``param``.

    The same module gets gaugeconv's multipliers; with ``seed`` it is initialised by the table
    (the draws mupify makes: N(0, s^2) per weight, and per bias with biases="mupify"). With a
    plain SGD ``optimizer`` (one group, as mupify requires) a new SGD with one group per tensor
    is returned, with the learning rates mupify gives (base lr times its factor) and its weight
    decay (the same stored value for every tensor).
    """
    key = str(param).lower()
    if key not in NAMED_POINTS:
        raise GaugeError(f"param={param!r} is not one of mupify's {list(NAMED_POINTS)}")
    if biases not in BIAS_CONVENTIONS:
        raise GaugeError(f"biases={biases!r} is not one of {BIAS_CONVENTIONS}")
    gauge, r = resolve_point(key)
    specs, width = _specs(model, biases)
    rich = Richness(r, 1.0)
    param_ = Parameterization(specs, rich, gauge, Family.SGD, width)
    notes: list[str] = []
    lr, wd, hyper, no_decay = 1.0, 0.0, {}, frozenset()
    if optimizer is not None:
        if len(optimizer.param_groups) != 1:
            raise GaugeError("mupify takes an optimizer with a single parameter group")
        rule = DEFAULT_REGISTRY.rule_for(optimizer)
        if rule.family is not Family.SGD:
            raise GaugeError(f"mupify's conventions are for SGD, not {type(optimizer).__name__}")
        group = optimizer.param_groups[0]
        lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
        stored = {name: StoredHypers(lr * plan.lr_factor, wd, "coupled")
                  for name, plan in param_.plans.items()}
        param_, no_decay, notes = import_parameterization(
            specs, param_.multipliers, stored, rich, Family.SGD, width, lr, wd,
            wd_scaling="coupled", gauge_name=gauge.name,
        )
        hyper = {k: v for k, v in group.items()
                 if k not in ("params", "param_names", "lr", "weight_decay", "initial_lr")}
    gauged = _gauged(model, param_)
    if seed is not None:
        gauged.initialize(seed)
    out = Imported(gauged, None, lr, wd, None, no_decay, hyper, notes,
                   source_multipliers=dict(param_.multipliers),
                   source_class=None if optimizer is None else type(optimizer))
    if optimizer is not None:
        out.optimizer = out.make_optimizer(type(optimizer))
    return out


