"""Per-tensor structure: role, fan_in and how the architecture initialises a tensor."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import GaugeError
from .richness import Role

__all__ = ["TensorSpec", "INIT_KINDS"]

INIT_KINDS = ("normal", "zeros", "ones", "keep")


@dataclass(frozen=True)
class TensorSpec:
    """What the gauge machinery needs to know about one stored tensor.

    fan_in is the number of inputs summed into one output entry (THEORY.md section 1): shape[1]
    for nn.Linear, shape[0] for GPT-2's Conv1D, 1 for embeddings, biases and norm parameters.
    init says how the architecture initialises it in effective space: "normal" draws entries with
    the role's variance v, "zeros"/"ones" keep those vector values, "keep" leaves it untouched.
    """

    name: str
    role: Role
    fan_in: int
    shape: tuple[int, ...] = field(default=())
    init: str = "normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role.parse(self.role))
        if not isinstance(self.fan_in, int) or isinstance(self.fan_in, bool) or self.fan_in < 1:
            raise GaugeError(f"tensor {self.name!r}: fan_in={self.fan_in!r} must be an integer >= 1")
        if self.init not in INIT_KINDS:
            raise GaugeError(f"tensor {self.name!r}: init={self.init!r} is not one of {INIT_KINDS}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
