"""Richness, roles and the gauge-invariant per-tensor targets (THEORY.md sections 1-2).

No torch in here: this is the math layer.

* activity          alpha = gamma * n**r,  r in [0, 1/2], gamma > 0
* init variance v   readin/hidden: 1/fan_in;  readout: 1/(alpha**2 * fan_in);  fixed: unchanged
* effective step    lambda = eta * lr_factor with

  ======== ======================= ==================================
  role     SGD-type (degree 1)     Adam-type (degree 0)
  ======== ======================= ==================================
  readin   alpha**2 / fan_in       alpha / (sqrt(n) * fan_in)
  hidden   alpha**2 / fan_in       alpha / (sqrt(n) * fan_in)
  readout  1 / fan_in              1 / fan_in
  fixed    1                       1
  ======== ======================= ==================================
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from enum import Enum

from .errors import GaugeError, RichnessError

__all__ = ["Role", "Family", "Richness", "Target", "target", "check_richness", "check_gamma"]


class Role(str, Enum):
    """Which dimensions of a tensor grow with width (THEORY.md section 1)."""

    READIN = "readin"  # fan-out grows
    HIDDEN = "hidden"  # fan-in and fan-out grow
    READOUT = "readout"  # fan-in grows
    FIXED = "fixed"  # neither grows: no width scaling

    @classmethod
    def parse(cls, value: Role | str) -> Role:
        if isinstance(value, Role):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise GaugeError(f"unknown role {value!r}; known roles: {known}") from None


class Family(str, Enum):
    """Optimizer family by degree k: the update is homogeneous of degree k in the gradient.

    SGD-type optimizers have k = 1, Adam-type (scale-invariant) ones k = 0 (THEORY.md section 4).
    """

    SGD = "sgd"
    ADAM = "adam"

    @property
    def degree(self) -> int:
        return 1 if self is Family.SGD else 0

    @classmethod
    def parse(cls, value: Family | str) -> Family:
        if isinstance(value, Family):
            return value
        v = str(value).lower()
        if v in ("sgd", "sgd-type"):
            return cls.SGD
        if v in ("adam", "adamw", "adam-type"):
            return cls.ADAM
        raise GaugeError(f"unknown optimizer family {value!r}; known: sgd, adam")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# gamma enters squared (alpha**2 in the targets), and so does its inverse (the readout's init
# variance 1/alpha**2): both must be normal float64 numbers, or the targets turn into 0 or inf.
_GAMMA_RANGE = (math.sqrt(sys.float_info.min) * 2.0, 1.0 / (math.sqrt(sys.float_info.min) * 2.0))


def check_richness(r: object, what: str = "richness r") -> float:
    """r as a float, if it is a finite real number in [0, 1/2]; RichnessError naming it if not.

    Every richness read from a user (arguments, configs, checkpoints) passes here first: NaN and
    inf are refused before any comparison (NaN != NaN would turn into a confusing message).
    """
    if not _is_real(r):
        raise RichnessError(f"{what}={r!r} is not a finite number: give r in [0, 1/2]")
    if not 0.0 <= r <= 0.5:  # type: ignore[operator]
        raise RichnessError(
            f"{what}={r!r} is outside [0, 1/2]: r < 0 makes outputs blow up with width, r > 1/2 "
            "makes updates blow up (THEORY.md section 2)"
        )
    return float(r)  # type: ignore[arg-type]


def check_gamma(gamma: object, what: str = "gamma") -> float:
    """gamma as a float, if it is a finite number > 0 whose square and inverse square are
    normal float64 numbers (about 1e-154 .. 1e154); RichnessError naming it if not."""
    if not _is_real(gamma) or gamma <= 0:  # type: ignore[operator]
        raise RichnessError(f"{what}={gamma!r} must be a finite number > 0")
    lo, hi = _GAMMA_RANGE
    if not lo <= gamma <= hi:  # type: ignore[operator]
        raise RichnessError(
            f"{what}={gamma!r} is too {'small' if gamma < lo else 'large'}: alpha**2 = "  # type: ignore[operator]
            f"(gamma n^r)**2 and its inverse must be normal float64 numbers, so gamma must lie "
            f"in [{lo:.3g}, {hi:.3g}]"
        )
    return float(gamma)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Richness:
    """A point on the richness axis: r in [0, 1/2] and the prefactor gamma > 0."""

    r: float
    gamma: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", check_richness(self.r))
        object.__setattr__(self, "gamma", check_gamma(self.gamma))

    def alpha(self, n: int) -> float:
        """Activity alpha = gamma * n**r."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise GaugeError(f"width n={n!r} must be a positive integer")
        return self.gamma * float(n) ** self.r


@dataclass(frozen=True)
class Target:
    """Gauge-invariant targets of one tensor: effective init variance and lr factor lambda/eta."""

    variance: float | None  # None: keep the architecture's init (fixed role, vectors)
    lr_factor: float


def target(role: Role | str, fan_in: int, n: int, richness: Richness, family: Family | str) -> Target:
    """Per-tensor targets (v, lambda/eta) of THEORY.md section 2's table."""
    role = Role.parse(role)
    family = Family.parse(family)
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or fan_in < 1:
        raise GaugeError(f"fan_in={fan_in!r} must be a positive integer")
    alpha = richness.alpha(n)
    if role is Role.FIXED:
        return Target(None, 1.0)
    out = _targets(role, family, alpha, fan_in, n)
    for value in (out.variance, out.lr_factor):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise RichnessError(
                f"gamma={richness.gamma!r} at width n={n} (fan_in {fan_in}, {role.value}): alpha = "
                f"gamma n^r = {alpha:.3g} gives a target of {value!r}, not a finite positive "
                "float64 number; choose gamma nearer 1"
            )
    return out


def _targets(role: Role, family: Family, alpha: float, fan_in: int, n: int) -> Target:
    with_alpha2 = alpha * alpha * fan_in
    if role is Role.READOUT:
        return Target(1.0 / with_alpha2 if with_alpha2 > 0 else math.inf, 1.0 / fan_in)
    variance = 1.0 / fan_in
    if family is Family.SGD:
        return Target(variance, alpha * alpha / fan_in)
    return Target(variance, alpha / (math.sqrt(n) * fan_in))
