"""Converting a Trainer checkpoint's optimizer.pt and scheduler.pt between gauges.

optimizer.pt is ``optimizer.state_dict()``: groups (with gaugeconv's ``param_names``) and
per-index state. Each group's hyperparameters and each state tensor move by the rules of
THEORY.md section 4 with the group's s; scheduler.pt's per-group learning rates move like lr.
Both are read with ``torch.load(weights_only=True)``: a pickle that needs more is refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..convert import SCHEDULER_LR_ATTRS, scale_state_, scaled_lr_list
from ..model import BASE_LR_GROUP
from ..optim_rules import DEFAULT_REGISTRY, OptimizerRule
from .safetensors_io import CheckpointError

__all__ = ["load_trusted", "infer_rule", "convert_optimizer_state", "convert_scheduler_state"]


def load_trusted(path: Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True; anything that needs arbitrary unpickling is refused."""
    try:
        with warnings.catch_warnings():  # the refusal below says it in one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # UnpicklingError and friends
        raise CheckpointError(
            f"{path.name} cannot be loaded with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); refusing to unpickle it"
        ) from None


def infer_rule(group: Mapping[str, Any]) -> OptimizerRule:
    """The optimizer family of a saved group, from its hyperparameter keys."""
    keys = set(group)
    if {"momentum", "dampening", "nesterov"} <= keys:
        return DEFAULT_REGISTRY.by_name("SGD")
    if {"betas", "amsgrad"} <= keys:
        return DEFAULT_REGISTRY.by_name("Adam")  # decoupled_weight_decay tells Adam from AdamW
    if "initial_accumulator_value" in keys:
        return DEFAULT_REGISTRY.by_name("Adagrad")
    if {"alpha", "centered"} <= keys:
        return DEFAULT_REGISTRY.by_name("RMSprop")
    raise CheckpointError(
        f"cannot tell the optimizer of optimizer.pt from its group keys {sorted(keys)}; "
        "pass the optimizer class (optimizer_class=)"
    )


def convert_optimizer_state(
    state_dict: dict[str, Any], scales: Mapping[str, float], rule: OptimizerRule | None = None
) -> tuple[dict[str, Any], list[float], OptimizerRule]:
    """Scaled copy of an optimizer state dict; returns it, the per-group s and the rule."""
    groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
        raise CheckpointError("optimizer.pt is not an optimizer state_dict")
    group_scales = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise CheckpointError(f"optimizer.pt group {i} is not a parameter group")
        names = group.get("param_names")
        if names is not None and (not isinstance(names, list)
                                  or not all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"optimizer.pt group {i}: param_names must be a list of names")
        if names is None:
            raise CheckpointError(
                f"optimizer.pt group {i} has no param_names, so its tensors cannot be identified; "
                "train with gaugeconv's groups (GaugeTrainer or optimizer_cls_and_kwargs)"
            )
        unknown = [n for n in names if n not in scales and n != BASE_LR_GROUP]
        if unknown:
            raise CheckpointError(f"optimizer.pt group {i} names tensors the model lacks: {unknown[:4]}")
        s_values = {scales[n] for n in names if n != BASE_LR_GROUP}
        if len(s_values) > 1:
            raise CheckpointError(f"optimizer.pt group {i} mixes tensors of different gauge factors")
        group_scales.append(s_values.pop() if s_values else 1.0)
    if not groups:
        raise CheckpointError("optimizer.pt has no parameter groups")
    for idx, st in state_dict["state"].items():
        if not isinstance(st, dict):
            raise CheckpointError(f"optimizer.pt entry {idx!r} is not a per-parameter state")
    rule = rule or infer_rule(next((g for g in groups if g.get("params")), groups[0]))
    index_scale = {}
    for group, s in zip(groups, group_scales):
        for idx in group["params"]:
            index_scale[idx] = s
    for i, group in enumerate(groups):
        _check_hypers(group, rule, f"optimizer.pt group {i}")
    for idx, st in state_dict["state"].items():
        rule.check_state(st, f"optimizer.pt entry {idx}")
    new_groups = []
    for group, s in zip(groups, group_scales):
        new_groups.append({**group, **rule.scaled_hypers(group, s)} if s != 1.0 else dict(group))
    new_state = {
        idx: scale_state_(
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()},
            index_scale.get(idx, 1.0), rule,
        )
        for idx, st in state_dict["state"].items()
    }
    return {**state_dict, "state": new_state, "param_groups": new_groups}, group_scales, rule


def _check_hypers(group: Mapping[str, Any], rule: OptimizerRule, where: str) -> None:
    """Every hyperparameter the gauge change scales (lr, initial_lr, eps, weight_decay...) is a
    finite real number or a one-entry tensor (capturable/fused lrs); absent (None) is fine."""
    for key in rule.hyper_powers(group):
        if group.get(key) is not None:
            _check_number(group[key], f"{where}: {key}")


def _check_number(value: Any, what: str) -> None:
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.is_floating_point() and bool(value.isfinite().all())
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise CheckpointError(f"{what} is {_show(value)}, not a finite number")


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} (a {type(value).__name__})"


def convert_scheduler_state(
    state: dict[str, Any], group_scales: list[float], degree: int
) -> dict[str, Any]:
    """Scaled copy of a scheduler state dict (nested schedulers of SequentialLR included)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"scheduler.pt holds a {type(state).__name__}, not a state dict")
    out = dict(state)
    for key in SCHEDULER_LR_ATTRS:
        values = state.get(key)
        if values is not None and (not isinstance(values, list)
                                   or len(values) != len(group_scales)):
            raise CheckpointError(
                f"scheduler.pt {key} has {len(values) if isinstance(values, list) else values!r}"
                f" entries, optimizer.pt {len(group_scales)} parameter groups: they must agree"
            )
        for i, v in enumerate(values or ()):
            _check_number(v, f"scheduler.pt {key}[{i}]")
        scaled = scaled_lr_list(state.get(key), group_scales, degree)
        if scaled is not None:
            out[key] = scaled
    if isinstance(state.get("_schedulers"), list):
        out["_schedulers"] = [
            convert_scheduler_state(s, group_scales, degree) if isinstance(s, dict) else s
            for s in state["_schedulers"]
        ]
    if state.get("eta_min"):
        raise CheckpointError(
            f"scheduler.pt has an absolute eta_min={state['eta_min']} shared by all groups; it "
            "cannot follow per-tensor learning rates"
        )
    return out
