"""A parameterization: tensor specs + richness + gauge + optimizer family at a width n.

It turns the gauge-invariant targets (v, lambda) of each tensor into the gauge-dependent
numbers (THEORY.md section 3): multiplier m, stored init std sqrt(v)/m, stored lr factor
lambda/(eta*m**(1+k)), eps factor m and weight-decay factors m**2 (coupled), m**(1+k)
(decoupled). These are the transformation rules of section 4 applied with s = m from the STP
gauge, in which stored = effective and the user's hyperparameters apply as given.

Two choices of the parameterization, not of the gauge (THEORY.md section 6), sit on top:

* per-tensor constants (TensorSpec.init_const, lr_const, wd_const, eps_const) multiply the
  targets: v -> init_const**2 * v, lambda -> lr_const * lambda;
* the weight-decay scaling: "coupled" to lambda (the effective decay is the user's wd, so the
  per-step decay fraction lambda*wd shrinks where lambda does) or "independent" (the effective
  decay is wd * eta/lambda, so the per-step fraction eta*wd is the same for every tensor and
  width: microsoft/mup's default). Either one is then carried through every gauge by section 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from .errors import GaugeError, RoleError
from .gauges import Gauge, get_gauge
from .richness import Family, Richness, Target, target
from .spec import TensorSpec

__all__ = ["TensorPlan", "Parameterization", "WD_SCALINGS"]

WD_SCALINGS = ("coupled", "independent")


@dataclass(frozen=True)
class TensorPlan:
    """The gauge-dependent numbers of one tensor."""

    spec: TensorSpec
    target: Target
    multiplier: float
    degree: int
    wd_scaling: str = "coupled"

    @property
    def init_std(self) -> float | None:
        """Stored init std sqrt(v)/m (None: the architecture's init is kept)."""
        if self.target.variance is None:
            return None
        return math.sqrt(self.target.variance) / self.multiplier

    @property
    def lr_factor(self) -> float:
        """Stored learning rate / eta = (lambda/eta) / m**(1+k)."""
        return self.target.lr_factor / self.multiplier ** (1 + self.degree)

    @property
    def hook_multiplier(self) -> float:
        """What the hooks apply: m / builtin (the module's forward applies the rest)."""
        return self.multiplier / self.spec.builtin

    @property
    def effective_eps_factor(self) -> float:
        """Effective-space eps / the user's eps: the tensor's eps constant."""
        return self.spec.eps_const

    @property
    def effective_wd_factor(self) -> float:
        """Effective-space weight decay / the user's wd (section 6's two scalings)."""
        if self.wd_scaling == "independent":
            return self.spec.wd_const / self.target.lr_factor
        return self.spec.wd_const

    @property
    def eps_factor(self) -> float:
        """Stored eps / the user's eps."""
        return self.effective_eps_factor * self.multiplier

    @property
    def coupled_wd_factor(self) -> float:
        """Stored weight decay / the user's wd, for decay added to the gradient (SGD, Adam)."""
        return self.effective_wd_factor * self.multiplier**2

    @property
    def decoupled_wd_factor(self) -> float:
        """Stored weight decay / the user's wd, for decoupled decay lr*wd*w (AdamW)."""
        return self.effective_wd_factor * self.multiplier ** (1 + self.degree)


class Parameterization:
    """Where a model sits: its tensors' roles, the richness, the gauge, the optimizer family."""

    def __init__(
        self,
        specs: Iterable[TensorSpec],
        richness: Richness | float,
        gauge: Gauge | str,
        family: Family | str,
        width: int,
        wd_scaling: str = "coupled",
    ) -> None:
        self.specs: dict[str, TensorSpec] = {}
        for spec in specs:
            if spec.name in self.specs:
                raise RoleError(f"tensor {spec.name!r} is specified twice")
            self.specs[spec.name] = spec
        self.richness = richness if isinstance(richness, Richness) else Richness(richness)
        self.gauge = get_gauge(gauge)
        self.family = Family.parse(family)
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise GaugeError(f"width n={width!r} must be a positive integer")
        self.width = width
        if wd_scaling not in WD_SCALINGS:
            raise GaugeError(
                f"wd_scaling={wd_scaling!r} is not one of {WD_SCALINGS} (THEORY.md section 6)"
            )
        self.wd_scaling = wd_scaling

    def __repr__(self) -> str:
        return (
            f"Parameterization(r={self.richness.r}, gamma={self.richness.gamma}, "
            f"gauge={self.gauge.name!r}, family={self.family.value!r}, width={self.width}, "
            f"wd_scaling={self.wd_scaling!r}, tensors={len(self.specs)})"
        )

    @cached_property
    def plans(self) -> dict[str, TensorPlan]:
        out = {}
        for name, spec in self.specs.items():
            tgt = target(spec.role, spec.fan_in, self.width, self.richness, self.family)
            if spec.init_const != 1.0 or spec.lr_const != 1.0:  # section 6's constants
                var = None if tgt.variance is None else tgt.variance * spec.init_const**2
                tgt = Target(var, tgt.lr_factor * spec.lr_const)
            m = self.gauge.multiplier(spec, tgt, self.richness, self.width, self.family)
            if not math.isfinite(m) or m <= 0:
                raise GaugeError(f"gauge {self.gauge.name!r} gave multiplier {m} to {name!r}")
            out[name] = TensorPlan(spec, tgt, float(m), self.family.degree, self.wd_scaling)
        return out

    @property
    def multipliers(self) -> dict[str, float]:
        return {name: plan.multiplier for name, plan in self.plans.items()}

    def with_gauge(self, gauge: Gauge | str) -> Parameterization:
        return Parameterization(
            self.specs.values(), self.richness, gauge, self.family, self.width, self.wd_scaling
        )

    def scales_to(self, other: Parameterization) -> dict[str, float]:
        """Per-tensor s = m_other / m_self. Both must share richness, family, width and tensors."""
        if other.richness != self.richness:
            raise GaugeError(
                f"a gauge change keeps the richness fixed: {self.richness} != {other.richness}"
            )
        if other.family != self.family or other.width != self.width:
            raise GaugeError("a gauge change keeps the optimizer family and the width fixed")
        if set(other.specs) != set(self.specs):
            missing = sorted(set(self.specs) ^ set(other.specs))
            raise RoleError(f"the two parameterizations cover different tensors: {missing[:5]}")
        if other.wd_scaling != self.wd_scaling:
            raise GaugeError(
                "a gauge change keeps the weight-decay scaling: "
                f"{self.wd_scaling!r} != {other.wd_scaling!r} (THEORY.md section 6)"
            )
        for name, spec in self.specs.items():
            if other.specs[name].constants != spec.constants:
                raise GaugeError(
                    f"a gauge change keeps the per-tensor constants; {name!r} has "
                    f"{spec.constants} here and {other.specs[name].constants} there"
                )
        a, b = self.multipliers, other.multipliers
        return {name: b[name] / a[name] for name in a}

    def describe(self) -> dict[str, object]:
        return {
            "richness": self.richness.r,
            "gamma": self.richness.gamma,
            "gauge": self.gauge.name,
            "family": self.family.value,
            "width": self.width,
            "wd_scaling": self.wd_scaling,
        }


def check_covers(specs: Mapping[str, TensorSpec], names: Iterable[str], what: str) -> None:
    """Every parameter name is covered by a spec and every spec names a parameter."""
    names = list(names)
    missing = [n for n in names if n not in specs]
    if missing:
        raise RoleError(
            f"{what}: no role is assigned to parameter(s) {missing}; give them a role"
        )
    extra = [n for n in specs if n not in set(names)]
    if extra:
        raise RoleError(f"{what}: role(s) given for unknown parameter(s) {extra}")
