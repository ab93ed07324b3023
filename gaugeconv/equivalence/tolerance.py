"""How far apart two equivalent runs may be: a multiple of the dtype's unit roundoff.

Two gauges of one richness train the same effective model (THEORY.md section 4); in floating
point they differ by rounding, which every step re-injects (u per operation) and the training
dynamics carry forward. The tolerance is u * 2^k, with k chosen from what the dtype must still
tell apart:

* float64, k = 13 (9.1e-13): measured differences of honest runs are 1e-16 to 1e-15 (loss,
  logits) over tens of steps, so 2^13 leaves three orders of magnitude for longer runs and
  more chaotic dynamics; the smallest real bug we measured (Adam's eps rule left out, eps
  1e-8) sits at 1e-7 or above, five orders above the tolerance.
* float32, k = 7 (7.6e-6): honest runs differ by 1e-7 to 1e-6 (1 to 16 u); the eps bug shows
  at 1e-5 to 1e-4 in the logits of most models and not at all in others, so a looser bound
  would hide it. float64 is the dtype for proofs (the CLI's default).
* bfloat16 / float16, k = 3 / 5: eight and eleven significant bits leave room for little but
  gross errors (a multiplier left out); their verdicts say "rounding-level" and mean it.

Bit for bit: where every factor between the two sides is a power of two, scaling commutes with
rounding and the runs must be identical (``expected_bit_identical``); any difference then fails.

Entries whose gradient is rounding noise (``noise_threshold``): where the loss does not depend
on an entry at all (attention's key bias: the softmax is invariant to adding one number to every
logit of a query), its gradient is 0 in exact arithmetic and cancellation noise in floating point,
far below every real gradient (measured: 1e-20 of the largest gradient in float64, 1e-11 in
float32; real gradients of the tiny test models go down to 1e-8). Adam divides by sqrt(v), so it
turns that noise into steps of up to the learning rate, different in each gauge and invisible to
the function. Such entries are left out of the weight comparison and counted in the report.
"""

from __future__ import annotations

import torch

__all__ = ["unit_roundoff", "default_tolerance", "noise_threshold", "TOLERANCE_EXPONENT"]

TOLERANCE_EXPONENT = {torch.float64: 13, torch.float32: 7, torch.bfloat16: 3, torch.float16: 5}


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the largest relative rounding error of one operation."""
    return torch.finfo(dtype).eps / 2


def default_tolerance(dtype: torch.dtype) -> float:
    """The largest relative difference two equivalent runs in ``dtype`` may show."""
    return unit_roundoff(dtype) * 2.0 ** TOLERANCE_EXPONENT.get(dtype, 3)


def noise_threshold(dtype: torch.dtype) -> float:
    """Gradient entries at most this fraction of the model's largest gradient (and not exactly
    zero) are rounding noise: u / 16."""
    return unit_roundoff(dtype) / 16
