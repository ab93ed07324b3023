"""Gauge-invariant gradient clipping.

Clipping by the global norm of the *stored* gradients is not gauge invariant: the stored gradient
of tensor p is m_p times the effective one (THEORY.md section 4), so two materialized gauges would
clip differently. Here the norm is that of the effective gradients g_p / m_p (the STP gauge's
norm, which is the plain form's own), computed exactly as ``torch.nn.utils.clip_grad_norm_``
computes it (``get_total_norm`` over the tensors in ``parameters()`` order), and every stored
gradient is multiplied by the same coefficient min(1, max_norm / (norm + 1e-6))
(``clip_grads_with_norm_``). A common factor on all gradients commutes with every gauge
transformation, so equivalent runs stay equivalent: a materialized gauge whose multipliers are
powers of two clips bit for bit like the plain form clipped by torch (or by the HF Trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import GaugedModel

__all__ = ["effective_grad_norm", "clip_grad_norm_", "effective_grads"]


@torch.no_grad()
def effective_grads(gauged: GaugedModel) -> list[torch.Tensor]:
    """dL/dW = (dL/dw) / m for every tensor with a gradient, in ``parameters()`` order."""
    m = gauged.multipliers
    out = []
    for name, p in gauged.module.named_parameters():
        if p.grad is not None:
            out.append(p.grad if m[name] == 1.0 else p.grad * (1.0 / m[name]))
    return out


def _total_norm(grads: list[torch.Tensor], norm_type: float, foreach: bool | None) -> torch.Tensor:
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total is not None:
        return total(grads, norm_type, False, foreach)
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), norm_type)


@torch.no_grad()
def effective_grad_norm(gauged: GaugedModel, norm_type: float = 2.0,
                        foreach: bool | None = None) -> torch.Tensor:
    """Norm of the effective gradients, as torch's clip_grad_norm_ would compute it."""
    return _total_norm(effective_grads(gauged), float(norm_type), foreach)


@torch.no_grad()
def clip_grad_norm_(gauged: GaugedModel, max_norm: float, norm_type: float = 2.0,
                    foreach: bool | None = None) -> torch.Tensor:
    """Scale all stored gradients by min(1, max_norm/(effective norm + 1e-6)); return the norm."""
    total = effective_grad_norm(gauged, norm_type, foreach)
    params = [p for p in gauged.module.parameters() if p.grad is not None]
    clip = getattr(torch.nn.utils, "clip_grads_with_norm_", None)  # torch >= 2.6
    if clip is not None:
        clip(params, max_norm, total, foreach)
        return total
    coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(coef.to(p.grad.device))
    return total
