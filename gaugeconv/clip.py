"""Gauge-invariant gradient clipping.

Clipping by the global norm of the *stored* gradients is not gauge invariant: the stored gradient
of tensor p is m_p times the effective one, so two gauges would clip differently. Here the norm
is that of the effective gradients g_p / m_p (the STP gauge's norm), and every stored gradient is
multiplied by the same factor min(1, max_norm / (norm + 1e-6)), as torch's clip_grad_norm_ does.
A common factor on all gradients commutes with every gauge transformation, so equivalent runs
stay equivalent.

A run set up in another tool clips by *its* stored norm, that of its own gauge A (microsoft/mup's
examples call torch's ``clip_grad_norm_`` on mup's stored gradients). Its stored gradient is
m_A * dL/dW and gauge B's is m_B * dL/dW (THEORY.md section 4, "gradient of w: s * grad"), so A's
norm computed in gauge B is the norm of the tensors (m_A / m_B) * g_B: ``clip_grad_norm_as_``
clips by it, with torch's own arithmetic (bit for bit torch's clip in gauge A itself), and the
common factor keeps every gauge on A's trajectory. ``clip_grad_norm_`` above is the case
m_A = 1 for every tensor (the STP gauge's norm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .errors import GaugeError

if TYPE_CHECKING:
    from .model import GaugedModel

__all__ = ["effective_grad_norm", "clip_grad_norm_", "grad_norm_as", "clip_grad_norm_as_"]


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


def _grads_as(gauged: GaugedModel, source: Mapping[str, float]) -> list[torch.Tensor]:
    """Gauge A's stored gradients (m_A / m_B) * g_B, in parameter order; g_B itself where the
    ratio is 1 (so gauge A gets its own tensors, bit for bit)."""
    m = gauged.multipliers
    grads = []
    for name, p in gauged.module.named_parameters():
        if p.grad is None:
            continue
        if name not in source:
            raise GaugeError(f"the source gauge gives no multiplier for {name!r}")
        ratio = float(source[name]) / m[name]
        grads.append(p.grad if ratio == 1.0 else p.grad * ratio)
    return grads


def _total_norm(grads: list[torch.Tensor], norm_type: float, error_if_nonfinite: bool,
                foreach: bool | None) -> torch.Tensor:
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads])
    total = norms.max() if math.isinf(norm_type) else torch.linalg.vector_norm(norms, norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite")
    return total


@torch.no_grad()
def grad_norm_as(gauged: GaugedModel, source: Mapping[str, float], norm_type: float = 2.0,
                 error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """The norm that gauge A (multipliers ``source``) clips by, from gauge B's gradients."""
    return _total_norm(_grads_as(gauged, source), norm_type, error_if_nonfinite, foreach)


@torch.no_grad()
def clip_grad_norm_as_(gauged: GaugedModel, source: Mapping[str, float], max_norm: float,
                       norm_type: float = 2.0, error_if_nonfinite: bool = False,
                       foreach: bool | None = None) -> torch.Tensor:
    """torch's ``clip_grad_norm_`` as gauge A would run it on its stored gradients, in any gauge.

    Every stored gradient is multiplied by min(1, max_norm / (norm_A + 1e-6)) with norm_A =
    ``grad_norm_as`` (torch's formula and order of operations); returns norm_A.
    """
    total = grad_norm_as(gauged, source, norm_type, error_if_nonfinite, foreach)
    params = [p for p in gauged.module.parameters() if p.grad is not None]
    clip_with_norm = getattr(torch.nn.utils, "clip_grads_with_norm_", None)  # torch >= 2.6
    if clip_with_norm is not None:
        clip_with_norm(params, max_norm, total, foreach)
    else:
        coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
        for p in params:
            p.grad.mul_(coef.to(p.grad.device))
    return total
