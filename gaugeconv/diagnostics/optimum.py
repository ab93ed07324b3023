"""Where a learning-rate sweep has its optimum, and how that optimum drifts with width.

A sweep gives a loss per base learning rate on a uniform grid in log2(lr). The optimum is the
vertex of the parabola through the grid minimum and its two neighbours (in log2(lr), on the loss
itself); with spacing h and losses y_-, y_0, y_+ around the minimum the vertex sits at

    log2(lr*) = x_0 + (h / 2) (y_- - y_+) / (y_- - 2 y_0 + y_+),

which lies within h/2 of x_0 because y_0 is the smallest of the three. Diverged runs (NaN or inf,
or a loss above ``diverged_above``, e.g. the loss at init: training made it worse) are left
out: a parabola through a blown-up neighbour would only measure the cliff. Where the parabola
cannot be drawn the grid point itself is returned with a status saying why: the minimum on the
first or last grid point ("edge-low", "edge-high": the true optimum may lie beyond the grid), a
diverged neighbour ("neighbour-diverged": the optimum sits at the edge of stability, resolved to
the grid step) or no finite point at all ("all-diverged", lr* = NaN).

The drift is the least-squares slope of log2(lr*) against log2(width), i.e. the change of the
optimal log2-lr per doubling of width, fitted per seed; its mean and standard error over seeds
come from ``fit.slope_over_seeds`` (a slope of ln lr* against ln n is the same number).
Hyperparameter transfer (Tensor Programs V) means a drift of zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .fit import slope_over_seeds

__all__ = ["Optimum", "interpolate_optimum", "lr_grid", "optimum_drift", "STATUSES"]

STATUSES = ("interior", "edge-low", "edge-high", "neighbour-diverged", "all-diverged")


@dataclass(frozen=True)
class Optimum:
    log2_lr: float  # interpolated optimum (the grid point itself unless status is "interior")
    loss: float  # the smallest finite loss on the grid (the measured value, not the parabola's)
    index: int  # grid index of that loss (-1: all diverged)
    status: str

    @property
    def lr(self) -> float:
        return 2.0**self.log2_lr


def lr_grid(log2_min: float, log2_max: float, per_octave: int = 2) -> list[float]:
    """Base learning rates 2**(log2_min + k / per_octave) up to log2_max inclusive."""
    if per_octave < 1 or log2_max <= log2_min:
        raise ValueError(f"empty lr grid: 2^{log2_min:g} .. 2^{log2_max:g}, {per_octave}/octave")
    count = round((log2_max - log2_min) * per_octave) + 1
    return [2.0 ** (log2_min + k / per_octave) for k in range(count)]


def interpolate_optimum(log2_lrs: Sequence[float], losses: Sequence[float],
                        diverged_above: float | None = None) -> Optimum:
    """The optimum of one curve on a uniform log2-lr grid (see the module docstring)."""
    if len(log2_lrs) != len(losses) or len(losses) < 3:
        raise ValueError("an optimum needs at least three grid points, one loss per point")
    steps = [b - a for a, b in zip(log2_lrs[:-1], log2_lrs[1:])]
    h = steps[0]
    if h <= 0 or any(abs(s - h) > 1e-9 * abs(h) for s in steps):
        raise ValueError("the log2-lr grid must be increasing and uniform")
    limit = math.inf if diverged_above is None or math.isnan(diverged_above) else diverged_above

    def _finite(v: float) -> bool:
        return v is not None and math.isfinite(v) and v <= limit

    finite = [i for i, v in enumerate(losses) if _finite(v)]
    if not finite:
        return Optimum(math.nan, math.nan, -1, "all-diverged")
    i = min(finite, key=lambda k: losses[k])
    x0, y0 = log2_lrs[i], losses[i]
    if i == 0:
        return Optimum(x0, y0, i, "edge-low")
    if i == len(losses) - 1:
        return Optimum(x0, y0, i, "edge-high")
    ym, yp = losses[i - 1], losses[i + 1]
    if not (_finite(ym) and _finite(yp)):
        return Optimum(x0, y0, i, "neighbour-diverged")
    curvature = ym - 2 * y0 + yp
    shift = 0.0 if curvature <= 0 else 0.5 * h * (ym - yp) / curvature
    return Optimum(x0 + shift, y0, i, "interior")


def optimum_drift(widths: Sequence[int], log2_opt_per_seed: Sequence[Sequence[float]]
                  ) -> tuple[float, float]:
    """(mean, standard error over seeds) of d log2(lr*) / d log2(width); NaN if any lr* is NaN."""
    if any(not math.isfinite(x) for row in log2_opt_per_seed for x in row):
        return math.nan, math.nan
    return slope_over_seeds(widths, [[2.0**x for x in row] for row in log2_opt_per_seed])
