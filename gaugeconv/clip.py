"""Gauge-invariant gradient clipping, and clipping by another gauge's norm.

Clipping by the global norm of the *stored* gradients is not gauge invariant: the stored gradient
of tensor p is m_p times the effective one (THEORY.md section 4, "gradient of w: s * grad"), so
two materialized gauges would clip differently. ``clip_grad_norm_`` clips by the norm of the
effective gradients g_p / m_p (the STP gauge's norm, which is the plain form's own), computed
exactly as ``torch.nn.utils.clip_grad_norm_`` computes it (``get_total_norm`` over the tensors in
``parameters()`` order), and multiplies every stored gradient by the same coefficient
min(1, max_norm / (norm + 1e-6)) (``clip_grads_with_norm_``). A common factor on all gradients
commutes with every gauge transformation, so equivalent runs stay equivalent: a materialized
gauge whose multipliers are powers of two clips bit for bit like the plain form clipped by
torch (or by the HF Trainer).

A run set up in another tool clips by *its* stored norm, that of its own gauge A (microsoft/mup's
examples call torch's ``clip_grad_norm_`` on mup's stored gradients). Its stored gradient is
m_A * dL/dW and this model's is m_B * dL/dW (m_B = 1 in the plain form), so A's norm computed
here is the norm of the tensors (m_A / m_B) * g_B: ``clip_grad_norm_as_`` clips by it, with
torch's own arithmetic (bit for bit torch's clip in gauge A itself), and the common factor keeps
every gauge on A's trajectory. ``clip_grad_norm_`` is the case m_A = 1 for every tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .errors import GaugeError

if TYPE_CHECKING:
    from .model import GaugedModel

__all__ = ["effective_grad_norm", "clip_grad_norm_", "effective_grads", "grad_norm_as",
           "clip_grad_norm_as_"]


def _grads_as(gauged: GaugedModel, source: Mapping[str, float] | None) -> list[torch.Tensor]:
    """Gauge A's stored gradients (m_A / m_B) * g_B, in parameter order (A = STP for None); g_B
    itself where the ratio is 1 (so gauge A gets its own tensors, bit for bit)."""
    m = gauged.multipliers
    grads = []
    for name, p in gauged.module.named_parameters():
        if p.grad is None:
            continue
        if source is None:
            a = 1.0
        elif name in source:
            a = float(source[name])
        else:
            raise GaugeError(f"the source gauge gives no multiplier for {name!r}")
        ratio = a / m[name]
        grads.append(p.grad if ratio == 1.0 else p.grad * ratio)
    return grads


def effective_grads(gauged: GaugedModel) -> list[torch.Tensor]:
    """dL/dW = (dL/dw) / m for every tensor with a gradient, in ``parameters()`` order."""
    with torch.no_grad():
        return _grads_as(gauged, None)


@torch.no_grad()
def grad_norm_as(gauged: GaugedModel, source: Mapping[str, float] | None, norm_type: float = 2.0,
                 error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """The norm that gauge A (multipliers ``source``; None: the STP gauge) clips by, here."""
    return torch.nn.utils.get_total_norm(_grads_as(gauged, source), float(norm_type),
                                         error_if_nonfinite, foreach)


@torch.no_grad()
def clip_grad_norm_as_(gauged: GaugedModel, source: Mapping[str, float] | None, max_norm: float,
                       norm_type: float = 2.0, error_if_nonfinite: bool = False,
                       foreach: bool | None = None) -> torch.Tensor:
    """torch's ``clip_grad_norm_`` as gauge A would run it on its stored gradients, in any gauge.

    Every stored gradient is multiplied by min(1, max_norm / (norm_A + 1e-6)) with norm_A =
    ``grad_norm_as`` (torch's formula and order of operations); returns norm_A.
    """
    total = grad_norm_as(gauged, source, norm_type, error_if_nonfinite, foreach)
    params = [p for p in gauged.module.parameters() if p.grad is not None]
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
    return total


def effective_grad_norm(gauged: GaugedModel, norm_type: float = 2.0,
                        foreach: bool | None = None) -> torch.Tensor:
    """Norm of the effective gradients, as torch's clip_grad_norm_ would compute it."""
    return grad_norm_as(gauged, None, norm_type, False, foreach)


def clip_grad_norm_(gauged: GaugedModel, max_norm: float, norm_type: float = 2.0,
                    foreach: bool | None = None) -> torch.Tensor:
    """Scale all stored gradients by min(1, max_norm/(effective norm + 1e-6)); return the norm."""
    return clip_grad_norm_as_(gauged, None, max_norm, norm_type, False, foreach)
