"""Per-tensor structure: role, fan_in, how the architecture initialises a tensor, and constants."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import GaugeError
from .richness import Role

__all__ = ["TensorSpec", "INIT_KINDS", "CONSTANT_FIELDS"]

INIT_KINDS = ("normal", "zeros", "ones", "keep")

# per-tensor constant factors (THEORY.md section 6, "Constants") and the architecture's own
# forward factor; all default to 1
CONSTANT_FIELDS = ("init_const", "lr_const", "wd_const", "eps_const", "builtin")


@dataclass(frozen=True)
class TensorSpec:
    """What the gauge machinery needs to know about one stored tensor.

    fan_in is the number of inputs summed into one output entry (THEORY.md section 1): shape[1]
    for nn.Linear, shape[0] for GPT-2's Conv1D, 1 for embeddings, biases and norm parameters.
    init says how the architecture initialises it in effective space: "normal" draws entries with
    the role's variance v, "zeros"/"ones" keep those vector values, "keep" leaves it untouched.

    Constants (THEORY.md section 6): factors that do not scale with width, so they change no
    exponent and the tensor stays in the richness family at the same r. They are part of the
    parameterization, not of the gauge: a gauge change keeps them.

    * init_const: effective init std = init_const * sqrt(v) (microsoft/mup's torch-default init
      gives 1/sqrt(3) on dense weights).
    * lr_const: effective step lambda = lr_const * lambda_table (mup's base width: n0/fan_in...).
    * wd_const: effective weight decay = wd_const * the weight-decay rule's value.
    * eps_const: effective Adam eps = eps_const * eps (mup applies eps to the stored gradient of
      its own gauge: eps_const = 1/m there).
    * builtin: the factor by which the module's own forward already multiplies this tensor
      (microsoft/mup's MuReadout: output_mult / width_mult). It is part of the tensor's
      multiplier m; the hooks apply only m / builtin.
    """

    name: str
    role: Role
    fan_in: int
    shape: tuple[int, ...] = field(default=())
    init: str = "normal"
    init_const: float = 1.0
    lr_const: float = 1.0
    wd_const: float = 1.0
    eps_const: float = 1.0
    builtin: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role.parse(self.role))
        if not isinstance(self.fan_in, int) or isinstance(self.fan_in, bool) or self.fan_in < 1:
            raise GaugeError(f"tensor {self.name!r}: fan_in={self.fan_in!r} must be an integer >= 1")
        if self.init not in INIT_KINDS:
            raise GaugeError(f"tensor {self.name!r}: init={self.init!r} is not one of {INIT_KINDS}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        for key in CONSTANT_FIELDS:
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise GaugeError(
                    f"tensor {self.name!r}: {key}={value!r} must be a finite number > 0"
                )
            object.__setattr__(self, key, float(value))

    @property
    def constants(self) -> dict[str, float]:
        """The constant factors that a gauge change keeps (builtin is the architecture's)."""
        return {key: getattr(self, key) for key in CONSTANT_FIELDS}
