"""Scaling stored tensors by a gauge factor with one rounding."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["scale_", "is_power_of_two"]

_CHUNK = 1 << 20


def is_power_of_two(x: float) -> bool:
    """True when x = 2**k exactly (then scaling commutes with rounding)."""
    if x <= 0 or not math.isfinite(x):
        return False
    mantissa, _ = math.frexp(x)
    return mantissa == 0.5


def scale_(t: torch.Tensor, factor: float) -> torch.Tensor:
    """t *= factor in place, rounded once from float64 (exact for powers of two).

    Narrow dtypes are scaled through a float64 copy of at most 2**20 entries at a time, so the
    result is the correctly rounded product and memory stays bounded. (torch is imported here:
    is_power_of_two serves the checkpoint code, which must not import torch for it.)
    """
    import torch

    with torch.no_grad():
        return _scale(t, float(factor))


def _scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    import torch

    if factor == 1.0:
        return t
    if t.dtype == torch.float64 or is_power_of_two(factor) or not t.is_floating_point():
        return t.mul_(factor)
    if not t.is_contiguous():
        t.copy_(t.to(torch.float64).mul_(factor))
        return t
    flat = t.view(-1)
    for chunk in flat.split(_CHUNK):
        chunk.copy_(chunk.to(torch.float64).mul_(factor))
    return t
