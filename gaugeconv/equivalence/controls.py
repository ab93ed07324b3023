"""Negative controls: the classic conversion bugs, put into one side on purpose.

A check that cannot fail proves nothing; each control breaks one rule of THEORY.md section 4 on
one side, and the comparison must then fail.

* ``eps``: Adam's eps left in the units it had before the side's optimizer moved into its
  stored units (``OptimizerRule.without("eps")`` applied after the fact: every group's eps
  divided by the factor s the eps rule multiplied it by).
* ``multiplier``: one tensor's forward multiplier dropped (the tensor with the multiplier
  farthest from 1; all of its uses, for a tied tensor): the stored tensor w = W/m is then used
  as if it were W. The function check before training already fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import GaugeError
from ..model import BASE_LR_GROUP, GaugedModel
from ..optim_rules import OptimizerRule

__all__ = ["CONTROLS", "leave_eps_unmoved", "drop_multiplier", "multiplier_candidate"]

CONTROLS = ("eps", "multiplier")


def leave_eps_unmoved(optimizer: torch.optim.Optimizer, rule: OptimizerRule,
                      factors: Mapping[str, float]) -> int:
    """Divide each group's eps by the factor s its tensors moved by; the number of groups
    changed. ``factors``: per tensor name, s from the units the state started in."""
    if not rule.eps_keys:
        raise GaugeError(f"{rule.name} has no eps: the eps control needs an Adam-type optimizer "
                         "(use --negative-control multiplier)")
    changed = 0
    for i, group in enumerate(optimizer.param_groups):
        names = [n for n in group.get("param_names") or () if n != BASE_LR_GROUP]
        scales = {factors[n] for n in names}
        if len(scales) > 1:
            raise GaugeError(f"optimizer group {i} holds tensors of different factors {names[:3]}")
        s = scales.pop() if scales else 1.0
        if s == 1.0:
            continue
        for key in rule.eps_keys:
            if key in group:
                group[key] = group[key] / s
                changed += 1
    return changed


def multiplier_candidate(gauged: GaugedModel) -> tuple[str, float] | None:
    """The tensor whose applied multiplier is farthest from 1 (None when all are 1)."""
    found = [(abs(math.log(m)), name, m) for name, m in gauged.multipliers.items() if m != 1.0]
    if not found:
        return None
    _, name, m = max(found)
    return name, m


def drop_multiplier(gauged: GaugedModel) -> dict[str, Any]:
    """Use one tensor's stored value without its multiplier in the forward; what was dropped."""
    found = multiplier_candidate(gauged)
    if found is None:
        raise GaugeError("the multiplier control needs a side whose multipliers are not all 1 "
                         "(the materialized form of a gauge other than STP)")
    name, m = found
    uses = {use: (1.0 if stored == name else m_use)
            for use, m_use in gauged.hooks.multipliers.items()
            for stored in (gauged.uses[use],)}
    gauged.hooks.set(uses)
    return {"tensor": name, "multiplier": m}
