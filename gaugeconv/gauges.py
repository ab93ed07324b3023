"""Gauges: rules that pick the forward multiplier m_p of every tensor (THEORY.md section 3).

Given m, the stored init std is sqrt(v)/m and the stored learning rate is lambda/m**(1+k) for an
optimizer of degree k (lambda/m**2 for SGD-type, lambda/m for Adam-type).

* STP:       m = 1 everywhere; per-tensor learning rates carry the width dependence.
* muP:       m chosen so that the stored lr is the global eta: sqrt(lambda/eta) (SGD),
             lambda/eta (Adam).
* rescaling: m = 1/sqrt(fan_in) for every weight, times 1/alpha on the readout; stored weights are
             N(0, 1), SGD runs with one global lr eta*alpha**2.
* custom:    any per-tensor assignment of m.

Named points (the reference code's names): ntp, ntp-lr, mup, mup-lr, mfp.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import GaugeError, UnknownGaugeError
from .richness import Family, Richness, Role, Target, check_richness
from .spec import TensorSpec

__all__ = [
    "Gauge",
    "STP",
    "MuP",
    "Rescaling",
    "Custom",
    "NAMED_POINTS",
    "GAUGE_NAMES",
    "get_gauge",
    "resolve_point",
]


class Gauge(ABC):
    """A rule that assigns a positive forward multiplier to each tensor."""

    name: str = "gauge"

    @abstractmethod
    def multiplier(
        self, spec: TensorSpec, target: Target, richness: Richness, n: int, family: Family
    ) -> float:
        """The multiplier m_p of one tensor."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


class STP(Gauge):
    """Standard-tensor gauge: no multipliers, stored = effective."""

    name = "stp"

    def multiplier(self, spec, target, richness, n, family) -> float:
        return 1.0


class MuP(Gauge):
    """Multipliers that make every stored learning rate equal to the global eta."""

    name = "mup"

    def multiplier(self, spec, target, richness, n, family) -> float:
        if Family.parse(family) is Family.SGD:
            return math.sqrt(target.lr_factor)
        return target.lr_factor


class Rescaling(Gauge):
    """NTK multipliers 1/sqrt(fan_in), and the output scaled by 1/alpha."""

    name = "rescaling"

    def multiplier(self, spec, target, richness, n, family) -> float:
        if spec.role is Role.FIXED:
            return 1.0
        m = 1.0 / math.sqrt(spec.fan_in)
        if spec.role is Role.READOUT:
            m /= richness.alpha(n)
        return m


class Custom(Gauge):
    """Any assignment of multipliers: a mapping name -> m, or a function of the TensorSpec."""

    def __init__(
        self,
        multipliers: Mapping[str, float] | Callable[[TensorSpec], float],
        name: str = "custom",
    ) -> None:
        self.rule = dict(multipliers) if isinstance(multipliers, Mapping) else multipliers
        self.name = name

    def multiplier(self, spec, target, richness, n, family) -> float:
        if isinstance(self.rule, dict):
            if spec.name not in self.rule:
                raise GaugeError(f"custom gauge {self.name!r} gives no multiplier for {spec.name!r}")
            m = self.rule[spec.name]
        else:
            m = self.rule(spec)
        m = float(m)
        if not math.isfinite(m) or m <= 0:
            raise GaugeError(f"custom gauge {self.name!r}: multiplier {m!r} of {spec.name!r} must be > 0")
        return m

    def __repr__(self) -> str:
        return f"Custom(name={self.name!r})"


_GAUGES: dict[str, type[Gauge]] = {"stp": STP, "mup": MuP, "rescaling": Rescaling}
GAUGE_NAMES = tuple(_GAUGES)


@dataclass(frozen=True)
class NamedPoint:
    """A (richness, gauge) pair with a name from the reference code."""

    name: str
    r: float
    gauge: str
    description: str


NAMED_POINTS: dict[str, NamedPoint] = {
    p.name: p
    for p in (
        NamedPoint("ntp", 0.0, "rescaling", "neural tangent parameterization"),
        NamedPoint("ntp-lr", 0.0, "stp", "NTK in STP gauge: standard init, per-layer lrs"),
        NamedPoint("mup", 0.5, "mup", "muP with multipliers (Yang & Hu abc)"),
        NamedPoint("mup-lr", 0.5, "stp", "muP in STP gauge (Tensor Programs V, Table 3)"),
        NamedPoint("mfp", 0.5, "rescaling", "mean-field parameterization (Bordelon & Pehlevan)"),
    )
}


def get_gauge(gauge: Gauge | str) -> Gauge:
    """A gauge from its name (stp, mup, rescaling) or a Gauge instance."""
    if isinstance(gauge, Gauge):
        return gauge
    key = str(gauge).lower().replace("_", "-")
    if key in {"mu-p", "mu"}:
        key = "mup"
    if key in _GAUGES:
        return _GAUGES[key]()
    if key in NAMED_POINTS:
        raise UnknownGaugeError(
            f"{gauge!r} is a named point (r={NAMED_POINTS[key].r}, gauge "
            f"{NAMED_POINTS[key].gauge!r}), not a gauge; use resolve_point({gauge!r})"
        )
    raise UnknownGaugeError(
        f"unknown gauge {gauge!r}; known gauges: {', '.join(GAUGE_NAMES)}; named points: "
        f"{', '.join(NAMED_POINTS)}"
    )


def resolve_point(name: Gauge | str, r: float | None = None) -> tuple[Gauge, float | None]:
    """Resolve a gauge or a named point to (gauge, richness or None).

    A gauge name keeps the given r ("mup" without an r means the named point, r = 1/2); a named
    point (ntp, ntp-lr, mup-lr, mfp) fixes r, and asking it for another r is an error.
    """
    if r is not None:
        r = check_richness(r)  # NaN and inf refused here, before any comparison
    if isinstance(name, Gauge):
        return name, r
    key = str(name).lower().replace("_", "-")
    if key in _GAUGES:
        return get_gauge(key), (r if r is not None or key != "mup" else NAMED_POINTS["mup"].r)
    if key in NAMED_POINTS:
        point = NAMED_POINTS[key]
        if r is not None and float(r) != point.r:
            raise GaugeError(f"named point {name!r} has r={point.r}, but r={r} was requested")
        return get_gauge(point.gauge), point.r
    return get_gauge(name), r
