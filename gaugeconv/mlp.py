"""The reference MLP of the paper's setting, built directly in any (r, gamma, gauge).

    h_1 = W_1 x (+ b_1),  h_l = W_l phi(h_{l-1}) (+ b_l),  f = W_L phi(h_{L-1}) (+ b_L)

Roles come from the structure (THEORY.md section 1): W_1 readin (fan_in d), W_2..W_{L-1} hidden,
W_L readout, hidden biases readin with fan_in 1, the output bias fixed. n is the reference hidden
width; all hidden widths are proportional to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import GaugeError
from .gauges import Gauge, resolve_point
from .model import GaugedModel
from .plan import Parameterization
from .richness import Family, Richness, Role
from .spec import TensorSpec

__all__ = ["ReferenceMLP", "build_mlp", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}


class ReferenceMLP(nn.Module):
    """A plain MLP: Linear layers in a ModuleList ``layers`` with an activation between them."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        widths: Sequence[int],
        activation: str = "tanh",
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if len(widths) < 1:
            raise GaugeError("the reference MLP needs at least one hidden layer (depth >= 2)")
        if activation not in ACTIVATIONS:
            raise GaugeError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        dims = [d_in, *widths, d_out]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias, dtype=dtype) for a, b in zip(dims[:-1], dims[1:])
        )
        self.act = ACTIVATIONS[activation]()

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        hidden = []
        h = self.layers[0](x)
        hidden.append(h)
        for layer in self.layers[1:]:
            h = layer(self.act(h))
            hidden.append(h)
        return (h, hidden[:-1]) if return_hidden else h

    def tensor_specs(self) -> list[TensorSpec]:
        """Roles from the structure: first layer readin, middle hidden, last readout."""
        specs = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            role = Role.READIN if i == 0 else Role.READOUT if i == last else Role.HIDDEN
            w = layer.weight
            specs.append(TensorSpec(f"layers.{i}.weight", role, w.shape[1], tuple(w.shape)))
            if layer.bias is not None:
                bias_role = Role.FIXED if i == last else Role.READIN
                specs.append(
                    TensorSpec(f"layers.{i}.bias", bias_role, 1, tuple(layer.bias.shape), "zeros")
                )
        return specs


def build_mlp(
    d_in: int,
    d_out: int,
    width: int,
    depth: int = 3,
    richness: float | Richness | None = None,
    gauge: Gauge | str = "mup",
    optimizer: str | Family = "sgd",
    gamma: float = 1.0,
    activation: str = "tanh",
    bias: bool = True,
    width_mults: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
    form: str = "plain",
) -> GaugedModel:
    """The reference MLP in (r, gamma, gauge), initialised per the table (seed=None: no init).

    ``gauge`` may be a named point (ntp, ntp-lr, mup, mup-lr, mfp), which fixes r (otherwise r
    defaults to 1/2). ``form``: "plain" (effective tensors in the Parameters, the gauge in the
    optimizer groups) or "materialized" (stored tensors, multipliers in the forward: what
    trajectory proofs between gauges use); both draw the same effective init. Hidden widths
    are round(mult * width) for ``width_mults`` (default all 1, depth - 1 hidden layers).
    """
    if depth < 2:
        raise GaugeError(f"depth={depth}: the reference MLP needs depth >= 2")
    mults = list(width_mults) if width_mults is not None else [1.0] * (depth - 1)
    if len(mults) != depth - 1:
        raise GaugeError(f"width_mults has {len(mults)} entries, depth {depth} needs {depth - 1}")
    widths = [max(1, round(m * width)) for m in mults]
    g, r = resolve_point(gauge, richness.r if isinstance(richness, Richness) else richness)
    r = 0.5 if r is None else r
    rich = Richness(r, richness.gamma if isinstance(richness, Richness) else gamma)
    module = ReferenceMLP(d_in, d_out, widths, activation, bias, dtype)
    param = Parameterization(module.tensor_specs(), rich, g, Family.parse(optimizer), width)
    gauged = GaugedModel(module, param, form=form)
    if seed is not None:
        gauged.initialize(seed)
    return gauged
