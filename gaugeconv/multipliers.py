"""Forward multipliers of the materialized form (kept for imports; see ``gaugeconv.materialized``).

In the materialized form every trainable tensor is stored as w and used as W = m * w: gauged
modules' classes are swapped so that ``module.weight`` gives m * w on every read (THEORY.md
section 1). The plain form, the default, keeps W in the Parameters and swaps nothing.
"""

from __future__ import annotations

from torch import nn

from .materialized import (
    EffectiveTensor,
    GaugedModuleMixin,
    Multipliers,
    check_unfold,
    is_gauged_module,
    multipliers_of,
    register_fsdp,
    unfold,
)
from .materialized.gauged_class import M_ATTR

__all__ = [
    "Multipliers", "GaugedModuleMixin", "multipliers_of", "is_gauged_module", "unfold", "M_ATTR",
    "mark_fsdp_sharded", "check_unfold", "EffectiveTensor",
]


def mark_fsdp_sharded(model: nn.Module) -> int:
    """Register FSDP2's parameters of a materialized gauge (after ``fully_shard``); a count."""
    return register_fsdp(model)
