"""Gauge-invariant gradient clipping.

Clipping by the global norm of the *stored* gradients is not gauge invariant: the stored gradient
of tensor p is m_p times the effective one, so two gauges would clip differently. Here the norm
is that of the effective gradients g_p / m_p (the STP gauge's norm), and every stored gradient is
multiplied by the same factor min(1, max_norm / (norm + 1e-6)), as torch's clip_grad_norm_ does.
A common factor on all gradients commutes with every gauge transformation, so equivalent runs
stay equivalent.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import GaugedModel

__all__ = ["effective_grad_norm", "clip_grad_norm_"]


@torch.no_grad()
def effective_grad_norm(gauged: GaugedModel, norm_type: float = 2.0) -> torch.Tensor:
    """Norm of the effective gradients dL/dW = (dL/dw) / m, computed in float64."""
    m = gauged.multipliers
    parts = []
    for name, p in gauged.module.named_parameters():
        if p.grad is not None:
            parts.append(torch.linalg.vector_norm(p.grad.double(), norm_type) / m[name])
    if not parts:
        return torch.zeros((), dtype=torch.float64)
    stacked = torch.stack([t.to(parts[0].device) for t in parts])
    if math.isinf(norm_type):
        return stacked.max()
    return torch.linalg.vector_norm(stacked, norm_type)


@torch.no_grad()
def clip_grad_norm_(gauged: GaugedModel, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scale all stored gradients by min(1, max_norm/(effective norm + 1e-6)); return the norm."""
    total = effective_grad_norm(gauged, norm_type)
    coef = float(max_norm) / (total.item() + 1e-6)
    if coef < 1.0:
        for p in gauged.module.parameters():
            if p.grad is not None:
                p.grad.mul_(coef)
    return total
