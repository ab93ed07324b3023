"""Stored tensors from effective ones: w = W / m with the forward's product hitting W exactly."""

from __future__ import annotations

import math

import torch

from ..errors import GaugeError
from ..tensor_ops import is_power_of_two

__all__ = ["unfold", "check_unfold"]


@torch.no_grad()
def unfold(effective: torch.Tensor, m: float, name: str | None = None) -> torch.Tensor:
    """The stored tensor w whose forward product ``w * m`` is ``effective`` bit for bit.

    w = W / m, then entries whose product misses W by rounding move one ulp (torch's scalar
    division may multiply by 1/m). Every W that some forward produced (W = fl(w0 * m)) is hit
    exactly, so a state dict saved from a gauged model and loaded back into the gauge gives the
    same function bit for bit; the stored tensor itself may differ from w0 in its last bit when
    m is not a power of two (for powers of two w = w0 exactly). With ``name``, entries that
    W/m loses are refused first (``check_unfold``).
    """
    w = effective / m
    if not w.is_floating_point() or w.is_meta:
        return w
    if name is not None:
        _refuse_lost(effective, w, m, name)
    if is_power_of_two(m):
        return w
    miss = (w * m) != effective
    if bool(miss.any()):
        for direction in (math.inf, -math.inf):
            step = torch.nextafter(w, torch.full_like(w, direction))
            w = torch.where(miss & ((step * m) == effective), step, w)
            miss = (w * m) != effective
    return w


def _refuse_lost(effective: torch.Tensor, w: torch.Tensor, m: float, name: str) -> None:
    lost = torch.isfinite(effective) & (effective != 0) & ((w == 0) | ~torch.isfinite(w))
    count = int(lost.sum())
    if count:
        raise GaugeError(
            f"{name}: {count} entr{'y' if count == 1 else 'ies'} of the effective tensor "
            f"underflow or overflow in {effective.dtype} when stored with multiplier {m!r} "
            "(w = W/m); choose a gauge with smaller multipliers (STP stores W itself) or a wider "
            "dtype"
        )


@torch.no_grad()
def check_unfold(effective: torch.Tensor, m: float, name: str) -> None:
    """Refuse an effective tensor whose stored form W / m leaves the dtype's range.

    A finite nonzero W whose w = W/m becomes 0 or inf would compute another function in the
    gauge (an extreme gamma, a float16 model): a GaugeError naming the tensor. For a pass that
    must refuse before anything changes; ``unfold(..., name=)`` checks as it goes.
    """
    if effective.is_floating_point() and not effective.is_meta:
        _refuse_lost(effective, effective / m, m, name)
