"""Import a model whose per-tensor multipliers and stored hyperparameters are known.

Given, per tensor, its role, fan_in, multiplier m (the total factor between stored and used
tensor) and the stored learning rate, weight decay and eps an optimizer gives it, the per-tensor
constants of THEORY.md section 6 follow from section 3's rules read backwards:

* lambda = lr_stored * m**(1+k)  ->  lr_const = lambda / (eta * lambda_table)
* effective wd = wd_stored / m**2 (coupled: SGD, Adam) or / m**(1+k) (decoupled: AdamW)
  ->  wd_const = effective wd / (wd * rule), rule = 1 (coupled) or eta/lambda (independent)
* effective eps = eps_stored / m  ->  eps_const = that / eps ("stored" convention: the source
  applies eps to its stored gradient) or eps_stored / eps ("effective": gaugeconv's
  width-consistent eps, applied to dL/dW; 1 unless a group has an eps of its own)

The result is a Parameterization in a Custom gauge with the source's multipliers; with these
constants it reproduces the source's stored hyperparameters (checked to 1e-12), and a gauge
change (convert) then carries the same trajectory to any gauge.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..clip import clip_grad_norm_as_, grad_norm_as
from ..convert import check_groups
from ..errors import GaugeError
from ..gauges import Custom
from ..model import GaugedModel, merge_groups, optimizer_class
from ..optim_rules import DEFAULT_REGISTRY, OptimizerRule
from ..plan import WD_SCALINGS, Parameterization
from ..richness import Family, Richness, target
from ..spec import TensorSpec
from .group_hypers import fit_to_class

__all__ = ["Imported", "StoredHypers", "import_parameterization", "copy_optimizer",
           "stored_hypers_of", "EPS_CONVENTIONS"]

EPS_CONVENTIONS = ("stored", "effective")
REL_TOL = 1e-12


@dataclass(frozen=True)
class StoredHypers:
    """What an optimizer gives one stored tensor: lr (before any schedule), wd and its mode, eps."""

    lr: float
    weight_decay: float = 0.0
    wd_mode: str = "coupled"  # "coupled" (added to the gradient) or "decoupled" (lr*wd*w)
    eps: float | None = None


@dataclass
class Imported:
    """The result of an import: the gauged module, its optimizer and the user-level values.

    lr, weight_decay, eps and hyper are the effective-space hyperparameters with which
    ``make_optimizer`` rebuilds the groups; group_hypers holds, per tensor, its source group's
    keys that no gauge moves (betas, momentum, nesterov, amsgrad...: ``group_hypers.py``).
    frozen: tensors the source does not train (left out of its optimizer, or in a group with
    lr 0); they stay fixed. source_multipliers: the source gauge's multiplier of every tensor
    (its stored gradient is m * dL/dW), for ``clip_grad_norm_``.
    """

    gauged: GaugedModel
    optimizer: torch.optim.Optimizer | None
    lr: float
    weight_decay: float
    eps: float | None
    no_decay: frozenset[str]
    hyper: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    group_hypers: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: frozenset[str] = frozenset()
    source_multipliers: dict[str, float] = field(default_factory=dict)
    source_class: type | None = None

    def no_decay_rule(self, name: str, param: torch.Tensor) -> bool:
        """For make_optimizer(no_decay=...): the tensors the source did not decay."""
        return name in self.no_decay

    def make_optimizer(self, optimizer: str | type, **overrides: Any) -> torch.optim.Optimizer:
        """A fresh optimizer with the imported hyperparameters, in the current gauge.

        Every tensor gets its source group's values of the keys no gauge moves (group_hypers);
        a keyword in ``overrides`` sets that key for every tensor instead. Frozen tensors are
        left out. ``merge=True`` merges tensors whose groups agree (GaugedModel.make_optimizer).
        """
        cls = optimizer_class(optimizer)
        rule = self.gauged.rule_for(cls)
        merge = bool(overrides.pop("merge", False))
        hyper = {**self.hyper, "weight_decay": self.weight_decay}
        if self.eps is not None:
            hyper["eps"] = self.eps
        per_tensor = {n: {k: v for k, v in values.items() if k not in overrides}
                      for n, values in self.group_hypers.items()}
        hyper, per_tensor = fit_to_class(cls, rule, self.source_class, hyper, per_tensor)
        hyper.update(overrides)
        lr = hyper.pop("lr", self.lr)
        new = self.gauged.make_optimizer(cls, lr, no_decay=self.no_decay_rule, rule=rule, **hyper)
        groups = []
        for group in new.param_groups:
            name = (group.get("param_names") or [None])[0]
            if name in self.frozen:
                continue
            group.update(copy.deepcopy(per_tensor.get(name, {})))
            groups.append(group)
        new.param_groups[:] = merge_groups(groups, self.gauged.plans) if merge else groups
        return new

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False,
                        foreach: bool | None = None) -> torch.Tensor:
        """Clip as the source did: torch's ``clip_grad_norm_`` on the source gauge's stored
        gradients (m_src / m * grad of each tensor, gaugeconv.clip.clip_grad_norm_as_), in
        whatever gauge the model is now; returns that norm. Not the effective (STP) norm of
        ``gaugeconv.clip.clip_grad_norm_``, which would leave the source's trajectory."""
        return clip_grad_norm_as_(self.gauged, self.source_multipliers, max_norm, norm_type,
                                  error_if_nonfinite, foreach)

    def grad_norm(self, norm_type: float = 2.0) -> torch.Tensor:
        """The source gauge's gradient norm (what its clipping compares with max_norm)."""
        return grad_norm_as(self.gauged, self.source_multipliers, norm_type)


def _gauged(model: nn.Module, param: Parameterization) -> GaugedModel:
    """The one place where importers put a module into a parameterization.

    Importers keep the source's stored tensors (mup's w, whose MuReadout applies its own factor):
    the module computes with m * w on every read.
    """
    return GaugedModel(model, param, form="materialized")


def stored_hypers_of(
    optimizer: torch.optim.Optimizer, names: Mapping[int, str], rule: OptimizerRule
) -> dict[str, StoredHypers]:
    """Per stored tensor, the hyperparameters of the group that holds it (initial_lr if set)."""
    check_groups(optimizer, names)
    out: dict[str, StoredHypers] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if name in out:
                raise GaugeError(f"{name!r} appears in two optimizer groups")
            lr = group.get("initial_lr", group["lr"])
            if hasattr(lr, "item"):
                lr = lr.item()
            eps = group.get(rule.eps_keys[0]) if rule.eps_keys else None
            out[name] = StoredHypers(float(lr), float(group.get("weight_decay", 0.0) or 0.0),
                                     rule.weight_decay_mode(group),
                                     None if eps is None else float(eps))
    return out


def _check_positive(value: float, what: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GaugeError(f"{what}={value!r} must be a finite number > 0")
    return float(value)


def import_parameterization(
    specs: list[TensorSpec],
    multipliers: Mapping[str, float],
    stored: Mapping[str, StoredHypers],
    richness: Richness,
    family: Family,
    width: int,
    lr: float,
    weight_decay: float = 0.0,
    eps: float | None = None,
    eps_convention: str = "stored",
    wd_scaling: str | None = None,
    gauge_name: str = "imported",
) -> tuple[Parameterization, frozenset[str], list[str]]:
    """The Parameterization (Custom gauge = the source's multipliers) with the constants above.

    wd_scaling None picks the scaling under which the fewest tensors need a weight-decay
    constant ("independent" on a tie); the tensors that still do are listed in the notes.
    """
    eta = _check_positive(lr, "lr")
    if eps_convention not in EPS_CONVENTIONS:
        raise GaugeError(f"eps_convention={eps_convention!r} is not one of {EPS_CONVENTIONS}")
    if wd_scaling is not None and wd_scaling not in WD_SCALINGS:
        raise GaugeError(f"wd_scaling={wd_scaling!r} is not one of {WD_SCALINGS}")
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise GaugeError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
    k = family.degree
    notes: list[str] = []
    lr_const: dict[str, float] = {}
    eps_const: dict[str, float] = {}
    wd_eff: dict[str, float] = {}
    no_decay = set()
    for spec in specs:
        if spec.name not in stored:
            raise GaugeError(f"{spec.name!r} is not in any optimizer group")
        h, m = stored[spec.name], float(multipliers[spec.name])
        base = target(spec.role, spec.fan_in, width, richness, family)
        lam = _check_positive(h.lr, f"learning rate of {spec.name!r}") * m ** (1 + k)
        lr_const[spec.name] = lam / (eta * base.lr_factor)
        if h.eps is not None:  # "effective": the group's own eps, applied to dL/dW
            eps_const[spec.name] = _check_positive(h.eps, f"eps of {spec.name!r}") / (
                _check_positive(eps, "eps") * (m if eps_convention == "stored" else 1.0))
        if h.weight_decay > 0:
            if weight_decay == 0:
                raise GaugeError(
                    f"{spec.name!r} has weight decay {h.weight_decay} but the base weight decay "
                    "is 0; pass weight_decay="
                )
            power = 2 if h.wd_mode == "coupled" else 1 + k
            wd_eff[spec.name] = h.weight_decay / m**power
        elif weight_decay > 0:
            no_decay.add(spec.name)
    # the weight-decay scaling: which rule explains the effective decays without constants
    lam_over_eta = {s.name: lr_const[s.name] * target(s.role, s.fan_in, width, richness,
                                                      family).lr_factor for s in specs}
    ratios = {
        "independent": {n: w * lam_over_eta[n] / weight_decay for n, w in wd_eff.items()},
        "coupled": {n: w / weight_decay for n, w in wd_eff.items()},
    }
    if wd_scaling is None:  # fewest tensors needing a constant; "independent" on a tie
        wd_scaling = min(("independent", "coupled"), key=lambda s: sum(
            not math.isclose(v, 1.0, rel_tol=1e-9) for v in ratios[s].values()))
    wd_const = {n: (1.0 if math.isclose(v, 1.0, rel_tol=1e-9) else v)
                for n, v in ratios[wd_scaling].items()}
    odd = sorted(n for n, v in wd_const.items() if v != 1.0)
    if odd:
        notes.append(
            f"weight decay is not '{wd_scaling}' for {odd}: carried as per-tensor wd_const "
            f"({', '.join(f'{wd_const[n]:.4g}' for n in odd[:4])}); such a constant depends on "
            "the source's gauge and width"
        )
    new_specs = [
        dataclasses.replace(
            s, lr_const=lr_const[s.name], wd_const=wd_const.get(s.name, 1.0),
            eps_const=eps_const.get(s.name, 1.0),
        )
        for s in specs
    ]
    gauge = Custom({s.name: float(multipliers[s.name]) for s in specs}, name=gauge_name)
    param = Parameterization(new_specs, richness, gauge, family, width, wd_scaling)
    return param, frozenset(no_decay), notes


def check_reproduces(param: Parameterization, stored: Mapping[str, StoredHypers], lr: float,
                     weight_decay: float, eps: float | None, eps_convention: str) -> None:
    """The parameterization gives back the source's stored hyperparameters (to 1e-12)."""
    for name, plan in param.plans.items():
        h = stored[name]
        checks = [("lr", h.lr, lr * plan.lr_factor)]
        if h.weight_decay > 0:
            factor = plan.coupled_wd_factor if h.wd_mode == "coupled" else plan.decoupled_wd_factor
            checks.append(("weight_decay", h.weight_decay, weight_decay * factor))
        if h.eps is not None and eps_convention == "stored":
            checks.append(("eps", h.eps, eps * plan.eps_factor))
        for key, have, want in checks:
            if not math.isclose(have, want, rel_tol=REL_TOL):
                raise GaugeError(f"import of {name!r}: {key} {have!r} is not reproduced ({want!r})")


def copy_optimizer(
    gauged: GaugedModel, optimizer: torch.optim.Optimizer, eps: float | None,
    eps_convention: str, rule: OptimizerRule | None = None,
) -> torch.optim.Optimizer:
    """A new optimizer of the same class, one group per tensor, state copied (cloned).

    Tensors in no source group stay out of it.

    Every group keeps the source group's hyperparameters (lr, initial_lr, momentum, betas...),
    so training continues on the same trajectory; with eps_convention "effective" the eps of
    each group is gaugeconv's (eps * m) instead of the source's.
    """
    rule = rule or DEFAULT_REGISTRY.rule_for(optimizer)
    params = dict(gauged.module.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = []
    for name, p in params.items():
        if id(p) not in group_of:
            continue  # not trained by the source: stays out (Imported.frozen)
        group = {k: copy.deepcopy(v) for k, v in group_of[id(p)].items()
                 if k not in ("params", "param_names")}
        if eps_convention == "effective" and eps is not None:
            for key in rule.eps_keys:
                group[key] = eps * gauged.plans[name].eps_factor
        group["params"] = [p]
        group["param_names"] = [name]
        groups.append(group)
    new = type(optimizer)(groups, **init_kwargs(type(optimizer), optimizer.defaults))
    for p in params.values():
        state = optimizer.state.get(p)
        if state:
            new.state[p] = {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                            for k, v in state.items()}
    return new


def init_kwargs(cls: type, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults that cls's constructor takes (AdamW records decoupled_weight_decay but
    does not accept it)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in defaults.items() if k in accepted}


def parameter_names(module: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters()}
