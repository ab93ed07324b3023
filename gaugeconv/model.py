"""GaugedModel: a torch module together with its parameterization, in one of two forms.

The handle does not wrap the module: the user keeps calling the module itself, whose state-dict
keys and forward are untouched. The handle initialises it per the gauge's init table, builds
per-tensor optimizer groups and converts it (with its optimizer) to another gauge or form.

Forms (``gaugeconv.forms``): in the plain form (the default) the Parameters hold the effective
tensors and nothing of the module changes: the gauge is carried by the optimizer groups, which
are the STP gauge's (THEORY.md section 4: every gauge at one richness has the same effective
dynamics). In the materialized form the Parameters hold the stored tensors w = W/m of the named
gauge and reads of ``module.weight`` give m * w (``gaugeconv.materialized``). ``applied`` is the
parameterization the module's tensors and the optimizer's state are in: the gauge itself when
materialized, its STP twin in plain form.

A model changes under the handle (a module replaced, embeddings resized, a layer appended, LoRA
adapters added): ``sync`` notices it by the tensors' names, shapes and identities, re-derives
the roles (``replanner``) and brings the modules in line with the plan, keeping what each module
computes now; the optimizer factory, ``param_groups`` and conversions call it first.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from .errors import GaugeError, RoleError, UnsupportedOptimizerError
from .forms import MATERIALIZED, PLAIN, check_form
from .gauges import Gauge
from .materialized import Multipliers, check_unfold, multipliers_of, register_fsdp, unfold
from .materialized.gauged_class import stored_tensor
from .optim_rules import DEFAULT_REGISTRY, LR_KEYS, OptimizerRegistry, OptimizerRule
from .plan import Parameterization, TensorPlan, check_covers

__all__ = [
    "GaugedModel", "attach", "optimizer_class", "default_no_decay", "tensor_uses", "BASE_LR_GROUP",
    "merge_groups", "Replanner", "KeepSpecs",
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


class Replanner(Protocol):
    """Roles for a module whose tensors changed: ``(module, old) -> new parameterization``."""

    def __call__(self, module: nn.Module, old: Parameterization) -> Parameterization: ...


class KeepSpecs:
    """The replanner of ``attach``: tensors keep their specs by name; new ones are an error.

    A tensor whose name and shape are unchanged keeps its role (a role belongs to the tensor's
    place in the network, so a replaced module of the same shape keeps it); a tensor that is new
    or changed shape needs a spec from the user.
    """

    def __call__(self, module: nn.Module, old: Parameterization) -> Parameterization:
        specs, unknown = [], []
        for name, p in module.named_parameters():
            spec = old.specs.get(name)
            if spec is None or (spec.shape and spec.shape != tuple(p.shape)):
                unknown.append(f"{name} {list(p.shape)}")
            else:
                specs.append(spec)
        if unknown:
            raise RoleError(
                f"{type(module).__name__}: tensor(s) {unknown[:6]} were added or changed shape "
                "since the gauge was attached; attach a Parameterization whose TensorSpecs cover "
                "them (gaugeconv.attach(model, parameterization))"
            )
        return Parameterization(specs, old.richness, old.gauge, old.family, old.width,
                                old.wd_scaling)


class GaugedModel:
    """A module in a given parameterization (richness, gauge, optimizer family, width), in a form."""

    def __init__(
        self,
        module: nn.Module,
        parameterization: Parameterization,
        registry: OptimizerRegistry = DEFAULT_REGISTRY,
        form: str = PLAIN,
        replanner: Replanner | None = None,
    ) -> None:
        names = [name for name, _ in module.named_parameters()]
        check_covers(parameterization.specs, names, type(module).__name__)
        _check_shapes(module, parameterization)
        self.module = module
        self.parameterization = parameterization
        self.registry = registry
        self.form = check_form(form)
        self.replanner: Replanner = replanner or KeepSpecs()
        self._check_form_holds()
        self.uses = tensor_uses(module)
        self.hooks = Multipliers(module, self.use_multipliers())  # name kept from 0.1
        self._float16_warned = False

    def __repr__(self) -> str:
        return (f"GaugedModel({type(self.module).__name__}, {self.parameterization!r}, "
                f"form={self.form!r})")

    # -- views -----------------------------------------------------------------------------
    @property
    def gauge(self) -> Gauge:
        return self.parameterization.gauge

    @property
    def applied(self) -> Parameterization:
        """The parameterization the stored tensors and the optimizer state are in.

        Materialized: the gauge itself. Plain: the gauge's STP twin (m = 1, per-tensor lr, eps
        and weight decay), which has the same effective dynamics (THEORY.md section 4).
        """
        return _applied(self.parameterization, self.form)

    @property
    def plans(self) -> dict[str, TensorPlan]:
        """Per tensor, the numbers the module's stored tensors are in (see ``applied``)."""
        return self.applied.plans

    @property
    def multipliers(self) -> dict[str, float]:
        """Per tensor, the multiplier applied in the forward (all 1 in plain form)."""
        return self.applied.multipliers

    def use_multipliers(self, parameterization: Parameterization | None = None) -> dict[str, float]:
        """Multiplier of every use of every tensor; a tied tensor's uses share its multiplier.

        A gauge transformation divides the stored tensor by s and multiplies every use's
        multiplier by s (THEORY.md section 6), so uses that start equal (a plain checkpoint)
        stay equal in every gauge and the tied model computes the same function. Defaults to
        the applied parameterization (all 1 in plain form).
        """
        plans = (parameterization or self.applied).plans
        # the modules apply m / builtin: a module that scales a tensor itself (mup's MuReadout)
        return {use: plans[name].hook_multiplier for use, name in self.uses.items()}

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module.named_parameters()

    @torch.no_grad()
    def effective_parameters(self, dtype: torch.dtype | None = torch.float64) -> dict[str, torch.Tensor]:
        """W = m * w for every tensor (computed in float64 by default, detached)."""
        m = self.multipliers
        out = {}
        for name, p in self.module.named_parameters():
            w = p.detach().to(dtype) if dtype is not None else p.detach().clone()
            out[name] = w * m[name]
        return out

    # -- init ------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, seed: int | torch.Generator = 0) -> GaugedModel:
        """Draw every tensor per the init table: stored std sqrt(v)/m, vectors per their kind.

        The draws are standard normals in spec order from one generator, so two gauges (and
        two forms) with the same seed start from the same effective weights (bit-identical
        when the ratio of their multipliers is a power of two).
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

    # -- keeping up with the module --------------------------------------------------------
    def sync(self) -> list[str]:
        """Bring the gauge in line with the module after it changed; what moved, in words.

        Tensors added, removed, reshaped or tied since the plan was made get roles again
        (``replanner``); then every use whose module does not carry its planned multiplier (a
        module replaced by a new one, a deep copy appended, adapters added) is brought to it,
        taking what the module computes now as the function: its stored tensor becomes
        unfold(m_now * w, m_planned). A slot holding a tensor the gauge did not put there is a
        GaugeError (materialized form). Nothing moves for a model that did not change.
        """
        moved: list[str] = []
        if self.form == MATERIALIZED:
            register_fsdp(self.module)
        uses = tensor_uses(self.module)
        if uses != self.uses or _shapes_differ(self.module, self.parameterization):
            new = self.replanner(self.module, self.parameterization)
            check_covers(new.specs, [n for n, _ in self.module.named_parameters()],
                         type(self.module).__name__)
            _check_shapes(self.module, new)
            changed = sorted(set(new.specs) ^ set(self.parameterization.specs))
            self.parameterization = new
            self.uses = uses
            self._check_form_holds()
            moved.append(f"roles re-derived ({len(changed)} tensor(s) added or removed)")
        moved.extend(self._reconcile(apply=True))
        return moved

    def pending_changes(self) -> list[str]:
        """What ``sync`` would move (empty when the module is as the plan says)."""
        if tensor_uses(self.module) != self.uses or _shapes_differ(self.module,
                                                                   self.parameterization):
            return ["tensors added, removed, reshaped or tied since the plan was made"]
        return self._reconcile(apply=False)

    def _reconcile(self, apply: bool) -> list[str]:
        wanted = self.use_multipliers()
        params = dict(self.module.named_parameters(remove_duplicate=False))
        moves: dict[str, tuple[float, float]] = {}
        for use, m_new in wanted.items():
            module_path, _, attr = use.rpartition(".")
            module = self.module.get_submodule(module_path)
            m_now = multipliers_of(module).get(attr)
            if m_now is None:
                m_now = 1.0
            else:
                stored_tensor(module, attr)  # a foreign tensor in the slot: refused by name
            if m_now == m_new:
                continue
            stored = self.uses[use]
            if moves.setdefault(stored, (m_now, m_new)) != (m_now, m_new):
                raise GaugeError(f"{stored}: its uses carry different multipliers now; it cannot "
                                 "be brought to one plan")
        out = [f"{name}: multiplier {a:.4g} -> {b:.4g}" for name, (a, b) in moves.items()]
        if not apply or not moves:
            return out
        with torch.no_grad():
            for name, (m_now, m_new) in moves.items():
                p = params[name]
                effective = p.detach() * m_now if m_now != 1.0 else p.detach()
                check_unfold(effective, m_new, name)
                p.copy_(unfold(effective, m_new))
        self.hooks.set(wanted)
        return out

    def _check_form_holds(self) -> None:
        if self.form != PLAIN:
            return
        builtin = [(n, s.builtin) for n, s in self.parameterization.specs.items() if s.builtin != 1]
        if builtin:
            name, b = builtin[0]
            raise GaugeError(
                f"{name} is scaled by its module's own forward (a builtin factor {b:.4g}, "
                "microsoft/mup's MuReadout): the plain form, whose Parameters hold effective "
                "tensors and whose forwards are the model's own, cannot hold it; use "
                "form='materialized'"
            )

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
        """Per-tensor groups, with lr, eps and weight decay moved into this gauge and form.

        The user's hyperparameters are effective-space values (those of the STP gauge): the
        group of tensor p gets lr * lambda_p/eta, eps * eps_const_p and the weight decay of the
        parameterization's scaling (coupled: wd * wd_const_p; independent: wd * wd_const_p *
        eta/lambda_p, THEORY.md section 6), then the section-4 rules with s = m_p (m_p = 1 in
        plain form). Keys the rule scales are always written into the group (taking the
        optimizer's own default when not given), so no unscaled default can leak in. Groups
        carry ``param_names``. The module is synced first (``sync``).

        With ``merge``, tensors of one role and fan_in whose hyperparameters are identical share
        a group (in order of first appearance): such tensors have one multiplier in every named
        gauge, so a conversion scales the group as a whole; a custom gauge that gives them
        different multipliers makes ``convert`` split the group.
        """
        self.sync()
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
        plans = self.plans
        for name, p in self.module.named_parameters():
            plan = plans[name]
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
        return merge_groups(groups, plans) if merge else groups

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
        groups = self.param_groups(lr, cls, no_decay=no_decay, rule=rule, **hyper)  # syncs
        self.check_float16()
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
        flushes many entries to zero; m far above 1 overflows instead. The plain form and the
        STP gauge (m = 1) keep stored gradients at their effective size.
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
            f"{len(far)} float16 tensor(s) carry multipliers far from 1 in the materialized "
            f"{self.gauge.name} gauge (m = {low:.3g} at {name!r}): their stored gradients are "
            "m times the effective ones and underflow (or overflow) float16; the plain form "
            "(the default) avoids it, as do bfloat16 or float32 weights with mixed precision",
            stacklevel=3,
        )

    # -- conversion ------------------------------------------------------------------------
    def convert(self, to: Gauge | str | Parameterization | None = None, optimizer=None,
                schedulers=(), rule=None, form: str | None = None):
        """Move the model (and optimizer, schedulers) to another gauge and/or form in place.

        Returns the factor s by which each stored tensor's multiplier moved (all 1 for a gauge
        change in plain form: only the label moves there). See ``gaugeconv.convert``.
        """
        from .convert import convert

        return convert(self, to, optimizer=optimizer, schedulers=schedulers, rule=rule, form=form)

    def materialize(self, optimizer=None, schedulers=(), rule=None) -> dict[str, float]:
        """Plain -> materialized form of the same gauge: stored tensors become W/m."""
        return self.convert(None, optimizer, schedulers, rule, form=MATERIALIZED)

    def to_plain(self, optimizer=None, schedulers=(), rule=None) -> dict[str, float]:
        """Materialized -> plain form of the same gauge: the Parameters hold W again."""
        return self.convert(None, optimizer, schedulers, rule, form=PLAIN)

    @torch.no_grad()
    def set_from_effective(self, parameterization: Parameterization, form: str = MATERIALIZED) -> None:
        """Take the module's current tensors as effective ones and put it into ``parameterization``.

        In the materialized form every stored tensor becomes w = W / m, chosen so that the
        forward product m * w is W bit for bit (``unfold``): the module computes exactly the
        function it computed before. In plain form the tensors stay as they are. Used to put a
        plain (STP) model or an effective-tensor checkpoint into a gauge.
        """
        if any(m != 1.0 for m in self.multipliers.values()):
            raise GaugeError("set_from_effective needs a module whose multipliers are all 1")
        old_form, old = self.form, self.parameterization
        self.form, self.parameterization = check_form(form), parameterization
        try:
            self._check_form_holds()
            m = self.multipliers
            for name, p in self.module.named_parameters():  # refuse before anything changes
                if m[name] != 1.0:
                    check_unfold(p.detach(), m[name], name)
            self.hooks.set(self.use_multipliers())  # may refuse: nothing changed yet
        except BaseException:
            self.form, self.parameterization = old_form, old
            raise
        for name, p in self.module.named_parameters():
            if m[name] != 1.0:
                p.copy_(unfold(p.detach(), m[name]))

    def remove(self) -> None:
        """Take the multipliers off (the module then computes with its stored tensors)."""
        self.hooks.remove()


def _applied(param: Parameterization, form: str) -> Parameterization:
    if form == MATERIALIZED:
        return param
    twin = param.__dict__.get("_stp_twin")
    if twin is None:
        twin = param.with_gauge("stp")
        param.__dict__["_stp_twin"] = twin
    return twin


def _check_shapes(module: nn.Module, param: Parameterization) -> None:
    for name, p in module.named_parameters():
        shape = param.specs[name].shape
        if shape and tuple(p.shape) != shape:
            raise GaugeError(f"{name}: spec shape {shape} != parameter shape {tuple(p.shape)}")


def _shapes_differ(module: nn.Module, param: Parameterization) -> bool:
    for name, p in module.named_parameters():
        spec = param.specs.get(name)
        if spec is None or (spec.shape and spec.shape != tuple(p.shape)):
            return True
    return len(param.specs) != sum(1 for _ in module.named_parameters())


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
    form: str = PLAIN,
) -> GaugedModel:
    """Put ``module`` into ``parameterization``; its tensors are kept as they are.

    Plain form (the default): the tensors are the effective ones and nothing of the module
    changes. Materialized form: they are taken as the gauge's stored tensors w, and reads of
    ``module.weight`` give m * w.
    """
    return GaugedModel(module, parameterization, registry, form=form)
