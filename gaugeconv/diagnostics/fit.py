"""Log-log slopes against width, with an uncertainty over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["loglog_slope", "slope_over_seeds"]


def loglog_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(width)."""
    xs = [math.log(w) for w in widths]
    ys = [math.log(max(v, 1e-300)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def slope_over_seeds(widths: Sequence[float], per_seed: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Mean of the per-seed slopes and its standard error (0 for a single seed)."""
    slopes = [loglog_slope(widths, values) for values in per_seed]
    mean = sum(slopes) / len(slopes)
    if len(slopes) < 2:
        return mean, 0.0
    var = sum((s - mean) ** 2 for s in slopes) / (len(slopes) - 1)
    return mean, math.sqrt(var / len(slopes))
