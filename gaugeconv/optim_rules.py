"""How optimizer hyperparameters and state move under a gauge transformation (THEORY.md section 4).

Moving a tensor from multiplier m to m' = s*m (stored w -> w/s, gradient -> s*grad):

=====================================  ==================
learning rate, optimizer of degree k   lr * s**-(1+k)
Adam-type eps (units of a gradient)    eps * s
coupled weight decay (in the gradient) wd * s**2
decoupled weight decay (AdamW)         wd * s**(1+k)
state linear in gradients              * s
state quadratic in gradients           * s**2
step counters                          unchanged
=====================================  ==================

An optimizer family is declared by its degree and the power of s of each state tensor; the
built-in registry covers torch's SGD, Adam, AdamW, Adamax, NAdam, Adagrad and RMSprop and the
sign method Lion (matched by class name). Optimizers whose update is not homogeneous in the
gradient (RAdam's warm-up switches degree, Adadelta, Adafactor's relative step, LBFGS's line
search, Rprop) are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import UnsupportedOptimizerError
from .richness import Family

__all__ = ["OptimizerRule", "OptimizerRegistry", "DEFAULT_REGISTRY", "REFUSED"]

LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


@dataclass(frozen=True)
class OptimizerRule:
    """The transformation rule of one optimizer family.

    degree: k, the update is homogeneous of degree k in the gradient (SGD 1, Adam 0).
    state_powers: state tensor name -> power of s it scales with (linear 1, quadratic 2,
        scale-invariant 0). Any state entry not listed here nor in invariant_state is refused.
    eps_keys: group keys measured in units of a gradient (scaled by s).
    weight_decay: "coupled" (added to the gradient), "decoupled" (lr*wd*w), or the name of a
        boolean group flag that selects decoupled when true (torch's Adam, NAdam).
    group_powers: further group keys with their power of s (Adagrad's initial accumulator).
    """

    name: str
    classes: tuple[str, ...]
    degree: int
    state_powers: Mapping[str, int] = field(default_factory=dict)
    eps_keys: tuple[str, ...] = ()
    weight_decay: str = "coupled"
    group_powers: Mapping[str, int] = field(default_factory=dict)
    invariant_state: tuple[str, ...] = ("step",)

    def __post_init__(self) -> None:
        if self.degree not in (0, 1):
            raise ValueError(f"optimizer rule {self.name!r}: degree must be 0 or 1")

    @property
    def family(self) -> Family:
        return Family.SGD if self.degree == 1 else Family.ADAM

    def weight_decay_mode(self, group: Mapping[str, Any]) -> str:
        if self.weight_decay in ("coupled", "decoupled"):
            return self.weight_decay
        return "decoupled" if group.get(self.weight_decay, False) else "coupled"

    def hyper_powers(self, group: Mapping[str, Any]) -> dict[str, int]:
        """Power of s for every scaled hyperparameter key of this group."""
        k = self.degree
        powers = {key: -(1 + k) for key in LR_KEYS}
        powers.update({key: 1 for key in self.eps_keys})
        powers["weight_decay"] = 2 if self.weight_decay_mode(group) == "coupled" else 1 + k
        powers.update(self.group_powers)
        return powers

    def scaled_hypers(self, group: Mapping[str, Any], s: float) -> dict[str, Any]:
        """The new values of the scaled hyperparameters present in group, for scale s."""
        out: dict[str, Any] = {}
        for key, power in self.hyper_powers(group).items():
            value = group.get(key)
            if value is None or isinstance(value, bool):
                continue
            if hasattr(value, "mul"):  # a tensor lr (capturable/fused optimizers)
                out[key] = value * s**power
            else:
                out[key] = float(value) * s**power
        return out

    def check_state(self, state: Mapping[str, Any], where: str) -> None:
        for key in state:
            if key not in self.state_powers and key not in self.invariant_state:
                raise UnsupportedOptimizerError(
                    f"{self.name}: state entry {key!r} of {where} has no transformation rule; "
                    f"known: {sorted(self.state_powers) + list(self.invariant_state)}"
                )

    def without(self, what: str) -> OptimizerRule:
        """A deliberately broken copy for negative controls: drop the 'eps' or 'lr' rule."""
        if what == "eps":
            return replace(self, name=f"{self.name}-without-eps", eps_keys=())
        if what == "lr":
            return replace(self, name=f"{self.name}-lr-off-by-one", degree=1 - self.degree)
        raise ValueError(f"can only drop 'eps' or 'lr', not {what!r}")


_ADAM_STATE = {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}

_BUILTIN = (
    OptimizerRule("SGD", ("SGD",), 1, {"momentum_buffer": 1}),
    OptimizerRule("Adam", ("Adam",), 0, _ADAM_STATE, ("eps",), "decoupled_weight_decay"),
    OptimizerRule("AdamW", ("AdamW",), 0, _ADAM_STATE, ("eps",), "decoupled"),
    OptimizerRule("Adamax", ("Adamax",), 0, {"exp_avg": 1, "exp_inf": 1}, ("eps",)),
    OptimizerRule(
        "NAdam", ("NAdam",), 0, {"exp_avg": 1, "exp_avg_sq": 2}, ("eps",),
        "decoupled_weight_decay", invariant_state=("step", "mu_product"),
    ),
    OptimizerRule(
        "Adagrad", ("Adagrad",), 0, {"sum": 2}, ("eps",),
        group_powers={"initial_accumulator_value": 2},
    ),
    OptimizerRule(
        "RMSprop", ("RMSprop",), 0,
        # momentum_buffer accumulates grad/sqrt(avg): scale-invariant, power 0.
        {"square_avg": 2, "grad_avg": 1, "momentum_buffer": 0}, ("eps",),
    ),
    OptimizerRule("Lion", ("Lion",), 0, {"exp_avg": 1}, (), "decoupled"),
)

REFUSED: dict[str, str] = {
    "RAdam": "its first steps are un-adapted momentum SGD (degree 1), later ones Adam (degree 0)",
    "Adadelta": "its eps sits in both numerator and denominator; the update is not homogeneous",
    "Adafactor": "its relative step size depends on the parameter's own scale",
    "LBFGS": "its line search and curvature pairs are not per-tensor homogeneous",
    "Rprop": "its step sizes are absolute, stored per entry, not in gradient units",
    "SparseAdam": "sparse gradients are not supported",
}


class OptimizerRegistry:
    """An immutable set of rules; extended() returns a new registry with more rules."""

    def __init__(self, rules: Iterable[OptimizerRule] = ()) -> None:
        self._rules: dict[str, OptimizerRule] = {}
        for rule in rules:
            for cls_name in rule.classes:
                self._rules[cls_name] = rule

    def extended(self, *rules: OptimizerRule) -> OptimizerRegistry:
        return OptimizerRegistry([*self._rules.values(), *rules])

    def names(self) -> list[str]:
        return sorted(self._rules)

    def rule_for(self, optimizer: Any) -> OptimizerRule:
        """The rule of an optimizer instance or class, matched along its MRO by class name."""
        cls = optimizer if isinstance(optimizer, type) else type(optimizer)
        for klass in cls.__mro__:
            if klass.__name__ in self._rules:
                return self._rules[klass.__name__]
            if klass.__name__ in REFUSED:
                break
        why = REFUSED.get(cls.__name__, "no rule is registered for it")
        raise UnsupportedOptimizerError(
            f"optimizer {cls.__name__!r} is not supported: {why}. Supported: "
            f"{', '.join(self.names())}; declare others with OptimizerRule(...) and "
            "DEFAULT_REGISTRY.extended(rule)"
        )

    def by_name(self, name: str) -> OptimizerRule:
        for key, rule in self._rules.items():
            if key.lower() == name.lower():
                return rule
        raise UnsupportedOptimizerError(
            f"unknown optimizer {name!r}; supported: {', '.join(self.names())}"
        )


DEFAULT_REGISTRY = OptimizerRegistry(_BUILTIN)
