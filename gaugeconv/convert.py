"""Live gauge (and form) conversion of a model, its optimizer and its LR schedulers (THEORY.md 4).

Per tensor, s = m_new / m_old. The stored tensor becomes w/s (its pending gradient s*grad);
each optimizer group gets the section-4 hyperparameter rules (lr * s**-(1+k), eps * s, weight
decay * s**2 coupled or * s**(1+k) decoupled) and every state tensor is multiplied by s to the
power its rule declares. Schedulers keep per-group copies of learning rates (base_lrs, _last_lr,
and the max_lrs/min_lrs of cyclic and plateau schedulers) and are scaled like lr. Everything is
checked before anything is changed, so a refused conversion leaves model, optimizer and
schedulers as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConversionError, GaugeError
from .gauges import Gauge
from .optim_rules import OptimizerRule
from .plan import Parameterization
from .tensor_ops import scale_

if TYPE_CHECKING:
    from .model import GaugedModel

__all__ = ["convert", "SCHEDULER_LR_ATTRS", "scaled_lr_list", "scale_state_"]

SCHEDULER_LR_ATTRS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")


def _flatten_schedulers(schedulers: Iterable[Any]) -> list[Any]:
    out = []
    for sched in schedulers:
        if sched is None:
            continue
        out.append(sched)
        out.extend(_flatten_schedulers(getattr(sched, "_schedulers", ())))
    return out


def check_groups(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> None:
    """Every tensor of every optimizer group is a parameter of the model (names: id -> name)."""
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in names:
                raise ConversionError(
                    f"optimizer group {i} holds a tensor of shape {tuple(p.shape)} that is not a "
                    "parameter of the model"
                )


def _split_groups(
    optimizer: torch.optim.Optimizer, names: dict[int, str], scales: dict[str, float],
    schedulers: list[Any],
) -> list[float]:
    """Split every group whose tensors get different factors s; return the s of each group.

    The pieces keep the group's other keys and its order (first appearance of each s), and
    every scheduler's per-group lists (learning rates, LambdaLR's lr_lambdas) are repeated for
    the pieces, so each tensor keeps its schedule.
    """
    new_groups: list[dict[str, Any]] = []
    origin: list[int] = []
    group_scales: list[float] = []
    for i, group in enumerate(optimizer.param_groups):
        labels = group.get("param_names")
        pieces: dict[float, dict[str, Any]] = {}
        for j, p in enumerate(group["params"]):
            s = scales[names[id(p)]]
            if s not in pieces:
                pieces[s] = {k: v for k, v in group.items() if k not in ("params", "param_names")}
                pieces[s]["params"] = []
                if labels is not None:
                    pieces[s]["param_names"] = []
            pieces[s]["params"].append(p)
            if labels is not None:
                pieces[s]["param_names"].append(labels[j])
        if len(pieces) <= 1:
            pieces = {next(iter(pieces), 1.0): group}
        for s, piece in pieces.items():
            new_groups.append(piece)
            origin.append(i)
            group_scales.append(s)
    if len(new_groups) != len(optimizer.param_groups):
        count = len(optimizer.param_groups)
        optimizer.param_groups[:] = new_groups
        for sched in schedulers:
            for attr in (*SCHEDULER_LR_ATTRS, "lr_lambdas"):
                values = getattr(sched, attr, None)
                if isinstance(values, list) and len(values) == count:
                    setattr(sched, attr, [values[i] for i in origin])
    return group_scales


def _check_schedulers(schedulers: list[Any], optimizer: Any) -> None:
    for sched in schedulers:
        if getattr(sched, "optimizer", optimizer) is not optimizer:
            raise ConversionError(f"{type(sched).__name__} drives another optimizer")
        eta_min = getattr(sched, "eta_min", 0)
        if eta_min:
            raise ConversionError(
                f"{type(sched).__name__} has an absolute eta_min={eta_min} shared by all groups; "
                "per-tensor learning rates need eta_min=0 (use a LambdaLR for a floor)"
            )


def convert(
    gauged: GaugedModel,
    to: Gauge | str | Parameterization | None,
    optimizer: torch.optim.Optimizer | None = None,
    schedulers: Iterable[Any] = (),
    rule: OptimizerRule | None = None,
    form: str | None = None,
) -> dict[str, float]:
    """Move a live model (and its optimizer and schedulers) to another gauge or form, in place.

    ``to``: the target gauge (None: the current one); ``form``: "plain" or "materialized"
    (None: the current one). What moves is the parameterization the stored tensors are in
    (``GaugedModel.applied``): between two materialized gauges, or between the forms, each
    stored tensor's multiplier moves by s and the section-4 rules apply; a gauge change in plain
    form moves nothing but the label (both sides compute with the same effective tensors and
    the same STP groups). Training continues on exactly the trajectory it would have followed:
    identical effective weights, outputs and losses in exact arithmetic, bit-identical when
    every s is a power of two. Returns the per-tensor factors s = m_new / m_old.
    """
    from .forms import check_form

    if optimizer is not None:
        pending = gauged.pending_changes()
        if pending:
            raise ConversionError(
                f"the model changed since its optimizer was built ({pending[0]}): the optimizer "
                "state of such tensors is in unknown units; build a new optimizer after the "
                "change (make_optimizer syncs the gauge), then convert"
            )
    else:
        gauged.sync()
    old_named = gauged.parameterization
    if to is None:
        new_named = old_named
    elif isinstance(to, Parameterization):
        new_named = to
    else:
        new_named = old_named.with_gauge(to)
    old_named.scales_to(new_named)  # same richness, family, width, tensors, constants
    new_form = check_form(form or gauged.form)
    old = gauged.applied
    new = _applied_of(new_named, new_form)
    scales = old.scales_to(new)
    params = dict(gauged.module.named_parameters())
    schedulers = _flatten_schedulers(schedulers if isinstance(schedulers, Iterable) else [schedulers])

    # 1. check everything first
    group_scales: list[float] = []
    if optimizer is not None:
        rule = rule or gauged.rule_for(optimizer)
        names = {id(p): n for n, p in params.items()}
        check_groups(optimizer, names)
        for p, state in optimizer.state.items():
            rule.check_state(state, names.get(id(p), "a tensor"))
        _check_schedulers(schedulers, optimizer)
    elif schedulers:
        raise GaugeError("schedulers were given without their optimizer")
    old_form = gauged.form
    gauged.form, gauged.parameterization = new_form, new_named
    try:
        gauged._check_form_holds()
        # 2. apply (the multipliers first: a module that cannot carry one is refused unchanged)
        gauged.hooks.set(gauged.use_multipliers(new))
    except BaseException:
        gauged.form, gauged.parameterization = old_form, old_named
        raise
    with torch.no_grad():
        for name, p in params.items():
            s = scales[name]
            scale_(p.data, 1.0 / s)
            if p.grad is not None:
                scale_(p.grad, s)
    if optimizer is None:
        return scales
    group_scales = _split_groups(optimizer, names, scales, schedulers)
    k = rule.degree
    for group, s in zip(optimizer.param_groups, group_scales):
        if s == 1.0:
            continue
        group.update(rule.scaled_hypers({**optimizer.defaults, **group}, s))
        for p in group["params"]:
            scale_state_(optimizer.state.get(p, {}), s, rule)
    for sched in schedulers:
        for attr in SCHEDULER_LR_ATTRS:
            scaled = scaled_lr_list(getattr(sched, attr, None), group_scales, k)
            if scaled is not None:
                setattr(sched, attr, scaled)
    return scales


def _applied_of(param: Parameterization, form: str) -> Parameterization:
    from .model import _applied

    return _applied(param, form)


def scale_state_(state: dict[str, Any], s: float, rule: OptimizerRule) -> dict[str, Any]:
    """Multiply each state tensor of one parameter by s to the power its rule declares."""
    for key, value in state.items():
        power = rule.state_powers.get(key, 0)
        if power and isinstance(value, torch.Tensor):
            scale_(value, s**power)
    return state


def scaled_lr_list(values: Any, group_scales: list[float], degree: int) -> list[float] | None:
    """A scheduler's per-group learning rates moved like lr (s**-(1+k)); None if not such a list."""
    if not isinstance(values, list) or len(values) != len(group_scales):
        return None
    return [v * s ** -(1 + degree) for v, s in zip(values, group_scales)]
