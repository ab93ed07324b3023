"""GaugedModel: a torch module together with its parameterization and its multipliers.

The handle does not wrap the module: the user keeps calling the module itself, whose state-dict
keys and forward are untouched. The handle initialises it per the gauge's init table, builds
per-tensor optimizer groups and converts it (with its optimizer) to another gauge.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .errors import GaugeError, UnsupportedOptimizerError
from .gauges import Gauge
from .multipliers import Multipliers, check_unfold, mark_fsdp_sharded, unfold
from .optim_rules import DEFAULT_REGISTRY, LR_KEYS, OptimizerRegistry, OptimizerRule
from .plan import Parameterization, TensorPlan, check_covers

__all__ = [
    "GaugedModel", "attach", "optimizer_class", "default_no_decay", "tensor_uses", "BASE_LR_GROUP",
    "merge_groups",
]

BASE_LR_GROUP = "gaugeconv/base-lr"  # param_names of the empty group that carries eta

_TORCH_OPTIMIZERS = {
    "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adamax": "Adamax", "nadam": "NAdam",
    "adagrad": "Adagrad", "rmsprop": "RMSprop",
}


def optimizer_class(name: str | type) -> type:
    """torch.optim class from a name such as 'sgd', 'adamw' (case-insensitive)."""
    if isinstance(name, type):
        return name
    key = str(name).lower()
    if key not in _TORCH_OPTIMIZERS:
        raise UnsupportedOptimizerError(
            f"unknown optimizer {name!r}; by name: {', '.join(_TORCH_OPTIMIZERS)} "
            "(or pass an optimizer class)"
        )
    return getattr(torch.optim, _TORCH_OPTIMIZERS[key])


def default_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm parameters (vectors) get no weight decay, as the HF Trainer does."""
    return param.ndim < 2


def _signature_default(cls: type, key: str) -> Any:
    param = inspect.signature(cls.__init__).parameters.get(key)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


class GaugedModel:
    """A module in a given parameterization (richness, gauge, optimizer family, width)."""

    def __init__(
        self,
        module: nn.Module,
        parameterization: Parameterization,
        registry: OptimizerRegistry = DEFAULT_REGISTRY,
    ) -> None:
        names = [name for name, _ in module.named_parameters()]
        check_covers(parameterization.specs, names, type(module).__name__)
        for name, p in module.named_parameters():
            shape = parameterization.specs[name].shape
            if shape and tuple(p.shape) != shape:
                raise GaugeError(f"{name}: spec shape {shape} != parameter shape {tuple(p.shape)}")
        self.module = module
        self.parameterization = parameterization
        self.registry = registry
        self.uses = tensor_uses(module)
        self.hooks = Multipliers(module, self.use_multipliers())  # name kept from 0.1
        self._float16_warned = False

    def __repr__(self) -> str:
        return f"GaugedModel({type(self.module).__name__}, {self.parameterization!r})"

    # -- views -----------------------------------------------------------------------------
    @property
    def gauge(self) -> Gauge:
        return self.parameterization.gauge

    @property
    def plans(self) -> dict[str, TensorPlan]:
        return self.parameterization.plans

    @property
    def multipliers(self) -> dict[str, float]:
        return self.parameterization.multipliers

    def use_multipliers(self, parameterization: Parameterization | None = None) -> dict[str, float]:
        """Multiplier of every use of every tensor; a tied tensor's uses share its multiplier.

        A gauge transformation divides the stored tensor by s and multiplies every use's
        multiplier by s (THEORY.md section 6), so uses that start equal (a plain checkpoint)
        stay equal in every gauge and the tied model computes the same function.
        """
        plans = (parameterization or self.parameterization).plans
        # the hooks apply m / builtin: a module that scales a tensor itself (mup's MuReadout)
        return {use: plans[name].hook_multiplier for use, name in self.uses.items()}

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module.named_parameters()

    @torch.no_grad()
    def effective_parameters(self, dtype: torch.dtype | None = torch.float64) -> dict[str, torch.Tensor]:
        """W = m * w for every tensor (computed in float64 by default, detached)."""
        out = {}
        for name, p in self.module.named_parameters():
            w = p.detach().to(dtype) if dtype is not None else p.detach().clone()
            out[name] = w * self.multipliers[name]
        return out

    # -- init ------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, seed: int | torch.Generator = 0) -> GaugedModel:
        """Draw every tensor per the init table: stored std sqrt(v)/m, vectors per their kind.

        The draws are standard normals in spec order from one generator, so two gauges with the
        same seed start from the same effective weights (bit-identical when the ratio of their
        multipliers is a power of two).
        """
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        params = dict(self.module.named_parameters())
        for name, plan in self.plans.items():
            p = params[name]
            kind = plan.spec.init
            if kind == "keep":
                continue
            if kind == "zeros":
                p.zero_()
            elif kind == "ones":
                p.fill_(1.0 / plan.multiplier)
            elif plan.init_std is None:
                continue  # fixed role: the architecture's own init
            else:
                z = torch.randn(p.shape, generator=gen, dtype=p.dtype, device="cpu")
                p.copy_(z.mul_(plan.init_std))
        return self

    # -- optimizer -------------------------------------------------------------------------
    def rule_for(self, optimizer: Any) -> OptimizerRule:
        rule = self.registry.rule_for(optimizer)
        if rule.family is not self.parameterization.family:
            raise GaugeError(
                f"optimizer {rule.name} is {rule.family.value}-type but the model's "
                f"parameterization is for {self.parameterization.family.value}-type optimizers"
            )
        return rule

    def param_groups(
        self,
        lr: float,
        optimizer: str | type = "sgd",
        no_decay: Callable[[str, torch.Tensor], bool] = default_no_decay,
        rule: OptimizerRule | None = None,
        merge: bool = False,
        **hyper: Any,
    ) -> list[dict[str, Any]]:
        """Per-tensor groups, with lr, eps and weight decay moved into this gauge.

        The user's hyperparameters are effective-space values (those of the STP gauge): the
        group of tensor p gets lr * lambda_p/eta, eps * eps_const_p and the weight decay of the
        parameterization's scaling (coupled: wd * wd_const_p; independent: wd * wd_const_p *
        eta/lambda_p, THEORY.md section 6), then the section-4 rules with s = m_p. Keys the
        rule scales are always written into the group (taking the optimizer's own default when
        not given), so no unscaled default can leak in. Groups carry ``param_names``.

        With ``merge``, tensors of one role and fan_in whose hyperparameters are identical share
        a group (in order of first appearance): such tensors have one multiplier in every named
        gauge, so a conversion scales the group as a whole; a custom gauge that gives them
        different multipliers makes ``convert`` split the group.
        """
        cls = optimizer_class(optimizer)
        rule = rule or self.rule_for(cls)
        base: dict[str, Any] = {}  # effective-space values of the keys the rule moves
        for key in rule.hyper_powers(hyper):
            if key in LR_KEYS:
                continue
            value = hyper.get(key, _signature_default(cls, key))
            if value is not None and not isinstance(value, bool):
                base[key] = float(value)
        groups = []
        for name, p in self.module.named_parameters():
            plan = self.plans[name]
            group: dict[str, Any] = {"lr": float(lr) * plan.target.lr_factor, **base}
            if "weight_decay" in group:  # effective decay: wd scaling and constant (section 6)
                wd_factor = 0.0 if no_decay(name, p) else plan.effective_wd_factor
                group["weight_decay"] *= wd_factor
            for key in rule.eps_keys:
                if key in group:
                    group[key] *= plan.effective_eps_factor
            group.update(rule.scaled_hypers({**hyper, **group}, plan.multiplier))
            group["params"] = [p]
            group["param_names"] = [name]
            groups.append(group)
        return merge_groups(groups, self.plans) if merge else groups

    def make_optimizer(
        self,
        optimizer: str | type,
        lr: float,
        no_decay: Callable[[str, torch.Tensor], bool] = default_no_decay,
        rule: OptimizerRule | None = None,
        base_lr_group: bool = False,
        merge: bool = False,
        **hyper: Any,
    ) -> torch.optim.Optimizer:
        """An optimizer with per-tensor groups; ``lr`` is the base (effective-space) rate eta.

        With ``merge``, tensors with identical hyperparameters (and one role and fan_in) share a
        group (fewer groups: fewer kernel launches in foreach/fused optimizers).

        Frozen tensors (requires_grad False) are left out. With ``base_lr_group`` the first group
        is an empty one whose lr is eta, so whatever logs "the" learning rate from group 0 (the
        HF Trainer, LR monitors) shows eta times the schedule.
        """
        cls = optimizer_class(optimizer)
        self.check_float16()
        mark_fsdp_sharded(self.module)  # FSDP2 re-reads its sharded Parameters by getattr
        groups = self.param_groups(lr, cls, no_decay=no_decay, rule=rule, **hyper)
        groups = [g for g in groups if g["params"][0].requires_grad]
        if merge:
            groups = merge_groups(groups, self.plans)
        if base_lr_group:
            groups.insert(0, {"params": [], "param_names": [BASE_LR_GROUP], "lr": float(lr),
                              "weight_decay": 0.0})
        scaled = {k for g in groups for k in g} - {"params", "param_names"}
        defaults = {k: v for k, v in hyper.items() if k not in scaled}
        return cls(groups, lr=float(lr), **defaults)

    def check_float16(self) -> None:
        """Warn (once per model) when float16 tensors carry multipliers far from 1.

        The stored gradient is m times the effective one (THEORY.md section 4), so with m = 1/64
        it sits 6 binades lower and float16's narrow range (normal numbers down to 6e-5)
        flushes many entries to zero; m far above 1 overflows instead. The STP gauge (m = 1)
        keeps stored gradients at their effective size.
        """
        if self._float16_warned:
            return
        m = self.multipliers
        far = [(m[n], n) for n, p in self.module.named_parameters()
               if p.dtype == torch.float16 and not 1 / 8 <= m[n] <= 8]
        if not far:
            return
        self._float16_warned = True
        low, name = min(far)
        warnings.warn(
            f"{len(far)} float16 tensor(s) carry multipliers far from 1 in the "
            f"{self.gauge.name} gauge (m = {low:.3g} at {name!r}): their stored gradients are "
            "m times the effective ones and underflow (or overflow) float16; the STP gauge "
            "(m = 1) avoids it, as do bfloat16 or float32 weights with mixed precision",
            stacklevel=3,
        )

    # -- conversion ------------------------------------------------------------------------
    def convert(self, to: Gauge | str | Parameterization, optimizer=None, schedulers=(), rule=None):
        """Move the model (and optimizer, schedulers) to another gauge in place; see convert()."""
        from .convert import convert

        return convert(self, to, optimizer=optimizer, schedulers=schedulers, rule=rule)

    @torch.no_grad()
    def set_from_effective(self, parameterization: Parameterization) -> None:
        """Take the module's current tensors as effective ones and put it into ``parameterization``.

        Every stored tensor becomes w = W / m, chosen so that the forward product m * w is W bit
        for bit (``multipliers.unfold``): the module computes exactly the function it computed
        before. Used to put a plain (STP) model or an effective-tensor checkpoint into a gauge.
        """
        if self.parameterization.multipliers != {n: 1.0 for n in self.plans}:
            raise GaugeError("set_from_effective needs a module whose multipliers are all 1")
        m = parameterization.multipliers
        for name, p in self.module.named_parameters():  # refuse before anything changes
            if m[name] != 1.0:
                check_unfold(p.detach(), m[name], name)
        self.hooks.set(self.use_multipliers(parameterization))  # may refuse: nothing changed yet
        for name, p in self.module.named_parameters():
            if m[name] != 1.0:
                p.copy_(unfold(p.detach(), m[name]))
        self.parameterization = parameterization

    def remove(self) -> None:
        """Take the multipliers off (the module then computes with its stored tensors)."""
        self.hooks.remove()


def merge_groups(groups: list[dict[str, Any]], plans: dict[str, TensorPlan]) -> list[dict[str, Any]]:
    """Per-tensor groups merged where role, fan_in and every hyperparameter agree."""
    merged: dict[tuple, dict[str, Any]] = {}
    for group in groups:
        spec = plans[group["param_names"][0]].spec
        hyper = tuple(sorted((k, repr(v)) for k, v in group.items()
                             if k not in ("params", "param_names")))
        key = (spec.role, spec.fan_in, hyper)
        if key in merged:
            merged[key]["params"] = merged[key]["params"] + group["params"]
            merged[key]["param_names"] = merged[key]["param_names"] + group["param_names"]
        else:
            merged[key] = dict(group)
    return list(merged.values())


def tensor_uses(module: nn.Module) -> dict[str, str]:
    """Every parameter path (tied duplicates included) -> the name of its stored tensor."""
    first: dict[int, str] = {}
    uses = {}
    for path, p in module.named_parameters(remove_duplicate=False):
        uses[path] = first.setdefault(id(p), path)
    return uses


def attach(
    module: nn.Module,
    parameterization: Parameterization,
    registry: OptimizerRegistry = DEFAULT_REGISTRY,
) -> GaugedModel:
    """Put the multipliers of ``parameterization`` on ``module``; its stored tensors are kept."""
    return GaugedModel(module, parameterization, registry)
