"""Forwards of gauged Linear, Conv1D, Embedding and ConvNd that scale activations, not weights.

A materialized gauge computes with W = m * w. Forming the product m * w and handing it to
``F.linear`` makes autograd save that product for the backward pass (``grad_x = grad_y @ W``):
a second, weight-sized copy of every gauged matrix held from forward to backward (issue 16
measured 419 MB held vs 58 MB plain for a GPT-2 of 387 MB; under FSDP2 the *unsharded*
products stay alive). These forwards use the linearity of the layer instead:

    x @ (m w)^T + m_b b  =  m * (x @ w^T + (m_b / m) b)

so autograd saves what it saves for a plain layer (x and the Parameter w itself) and the
multiplication by the Python scalar m saves nothing. Every factor of a power of two commutes
with rounding, so the output is bit-identical to the plain model's whenever m and m_b / m are
powers of two (the same condition as for gauge conversions, THEORY.md section 4); otherwise it
differs by rounding.

Where the activation side would lose range (float16 compute: w = W/m is 1/m times larger than
W, and x @ w^T can overflow float16's 65504 where x @ W^T does not) the weight side is used,
as before. A subclass that overrides ``forward`` keeps its own (it reads ``module.weight``,
which gives m * w), and so does a module whose weight is a parametrization's (weight norm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["scaled_forward_for"]


def _half_compute(x: torch.Tensor, w: torch.Tensor) -> bool:
    if x.dtype == torch.float16 or w.dtype == torch.float16:
        return True
    device = x.device.type
    return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16


def _weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, float, float]:
    from .gauged_class import stored_tensor

    m = module.__dict__["_gaugeconv_m"]
    w = stored_tensor(module, "weight")
    b = stored_tensor(module, "bias") if module._parameters.get("bias") is not None else None
    return w, b, m.get("weight", 1.0), m.get("bias", 1.0)


def _folded_bias(b: torch.Tensor | None, mw: float, mb: float) -> torch.Tensor | None:
    """(m_b / m) * b: the bias in the units of the unscaled product x @ w^T."""
    if b is None or mb == mw:
        return b
    return b * (mb / mw)


def _scaled(out: torch.Tensor, m: float) -> torch.Tensor:
    return out if m == 1.0 else out * m


def _base_class(module: nn.Module) -> type:
    """The class the gauged class was made from (FSDP2 may have wrapped ours again)."""
    for klass in type(module).__mro__:
        base = klass.__dict__.get("_gaugeconv_base")
        if base is not None:
            return base
    return type(module)


def _own_weight(module: nn.Module) -> bool:
    """Whether the weight is a Parameter of the module itself (not a parametrization's)."""
    return "weight" in module._parameters


def _linear(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
    if not _own_weight(self):
        return nn.Linear.forward(self, input)
    w, b, mw, mb = _weight_and_bias(self)
    if _half_compute(input, w):
        return F.linear(input, w * mw, None if b is None else b * mb)
    return _scaled(F.linear(input, w, _folded_bias(b, mw, mb)), mw)


def _conv1d_gpt2(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Conv1D ([in, out] weight, addmm with the bias) with the scale outside."""
    if not _own_weight(self):
        return _base_class(self).forward(self, x)
    w, b, mw, mb = _weight_and_bias(self)
    size_out = x.size()[:-1] + (self.nf,)
    flat = x.view(-1, x.size(-1))
    if _half_compute(x, w):
        out = torch.addmm(b * mb, flat, w * mw)
    else:
        out = _scaled(torch.addmm(_folded_bias(b, mw, mb), flat, w), mw)
    return out.view(size_out)


def _conv(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
    if not _own_weight(self):  # weight norm and other parametrizations: the base's own path
        return self._conv_forward(input, self.weight, self.bias)
    w, b, mw, mb = _weight_and_bias(self)
    if _half_compute(input, w):
        return self._conv_forward(input, w * mw, None if b is None else b * mb)
    return _scaled(self._conv_forward(input, w, _folded_bias(b, mw, mb)), mw)


def _embedding_for(base_forward: Callable) -> Callable:
    def forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None or not _own_weight(self):  # renorm in place, parametrized
            return base_forward(self, input)
        w, _, mw, _ = _weight_and_bias(self)
        if _half_compute(w, w):
            return base_forward(self, input)
        out = F.embedding(input, w, self.padding_idx, None, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        return _scaled(out, mw)

    return forward


def _is_gpt2_conv1d(forward: Callable) -> bool:
    return getattr(forward, "__qualname__", "") == "Conv1D.forward" and \
        getattr(forward, "__module__", "") == "transformers.pytorch_utils"


def scaled_forward_for(base: type) -> Callable | None:
    """The activation-side forward for ``base`` if its forward is one of torch's / GPT-2's."""
    forward = getattr(base, "forward", None)
    if forward is nn.Linear.forward:
        return _linear
    if forward in (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward):
        return _conv
    if forward is nn.Embedding.forward:
        return _embedding_for(forward)
    if _is_gpt2_conv1d(forward):
        return _conv1d_gpt2
    return None
