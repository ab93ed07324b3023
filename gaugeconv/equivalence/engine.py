"""Two gauged models trained side by side on the same batches, compared after every step.

Each side is a model with its GaugedModel handle, its optimizer, schedulers and clipping. Per
step both sides see the same inputs and the same dropout masks (the random generator is seeded
per step inside ``torch.random.fork_rng``, so the caller's generator is left as it was), run
forward, loss, backward, clipping by the effective-gradient norm (the same in every gauge),
optimizer and scheduler steps. Then the losses, the logits and the effective weights W = m*w
are compared (``EquivalenceReport``). Nothing here knows about transformers: inputs are a dict
(keyword arguments), a tuple (positional) or one tensor, and the loss is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..clip import clip_grad_norm_
from ..model import GaugedModel
from .report import QUANTITIES, EquivalenceReport
from .tolerance import default_tolerance, noise_threshold

__all__ = ["Side", "run_side_by_side", "compare_function", "rel_diff", "call_model",
           "primary_output", "output_tensors", "LossFn", "Batch"]

LossFn = Callable[[Any, Any], torch.Tensor]  # (model outputs, targets) -> scalar loss
Batch = tuple[Any, Any]  # (inputs, targets)


@dataclass
class Side:
    """One of the two runs: the model, its gauge handle, and how it trains."""

    label: str
    model: nn.Module
    gauged: GaugedModel
    optimizer: torch.optim.Optimizer | None = None
    schedulers: list[Any] = field(default_factory=list)
    max_grad_norm: float = 0.0


def rel_diff(a: torch.Tensor, b: torch.Tensor, skip: torch.Tensor | None = None) -> float:
    """max|a - b| / max(max|a|, max|b|) in float64 (0 when equal; inf for other shapes).

    ``skip`` masks entries out of the numerator (the scale still counts every entry).
    """
    if a.shape != b.shape:
        return math.inf
    a, b = a.detach().double(), b.detach().double()
    if a.numel() == 0:
        return 0.0
    diff = (a - b).abs()
    if skip is not None:
        diff = diff.masked_fill(skip, 0.0)
    err = diff.max().item()
    if err == 0.0:
        return 0.0
    if math.isnan(err):
        return math.inf
    scale = max(a.abs().max().item(), b.abs().max().item())
    return err / scale if scale > 0 else math.inf


def call_model(model: nn.Module, inputs: Any) -> Any:
    """model(**inputs) for a dict, model(*inputs) for a tuple or list, else model(inputs)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every floating-point tensor of a model output (transformers' ModelOutput included)."""
    found: list[torch.Tensor] = []

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if x.is_floating_point():
                found.append(x)
        elif isinstance(x, (tuple, list)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)
        elif hasattr(x, "to_tuple"):
            visit(x.to_tuple())

    visit(out)
    return found


def primary_output(out: Any) -> torch.Tensor:
    """The logits of a model output; a headless model's last_hidden_state; else the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = out.get(key) if isinstance(out, dict) else getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    tensors = output_tensors(out)
    if not tensors:
        raise TypeError(f"the model returned no floating-point tensor ({type(out).__name__})")
    return tensors[0]


@torch.no_grad()
def compare_function(a: nn.Module, b: nn.Module, inputs: Any) -> tuple[float, bool]:
    """The largest relative difference over every output tensor of a(inputs) and b(inputs), in
    eval mode, and whether all are bit-identical. Training modes are restored."""
    modes = [(m, m.training) for m in (a, b)]
    try:
        a.eval()
        b.eval()
        oa, ob = output_tensors(call_model(a, inputs)), output_tensors(call_model(b, inputs))
    finally:
        for m, mode in modes:
            m.train(mode)
    if len(oa) != len(ob) or not oa:
        return math.inf, False
    worst = max(rel_diff(x, y) for x, y in zip(oa, ob))
    return worst, all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(oa, ob))


def _devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _noise_entries(gauged: GaugedModel, threshold: float) -> dict[str, torch.Tensor]:
    """Per tensor, the entries whose effective gradient is rounding noise (see tolerance.py)."""
    m = gauged.multipliers
    grads = {n: p.grad.detach() / m[n] for n, p in gauged.module.named_parameters()
             if p.grad is not None}
    if not grads:
        return {}
    top = max(g.abs().max().item() for g in grads.values())
    if not math.isfinite(top) or top == 0:
        return {}
    return {n: (g != 0) & (g.abs() <= threshold * top) for n, g in grads.items()}


def _weights_diff(wa: dict[str, torch.Tensor], wb: dict[str, torch.Tensor],
                  skip: dict[str, torch.Tensor]) -> tuple[str | None, float]:
    """All effective weights as one vector: max|a - b| / max(max|a|, max|b|), noise entries
    left out of the numerator; and the tensor where the largest difference sits."""
    scale, err, where = 0.0, 0.0, None
    for n, a in wa.items():
        b = wb[n]
        if a.numel() == 0:
            continue
        scale = max(scale, a.abs().max().item(), b.abs().max().item())
        diff = (a - b).abs()
        if n in skip:
            diff = diff.masked_fill(skip[n], 0.0)
        d = diff.max().item()
        if d > err or math.isnan(d):
            err, where = (math.inf if math.isnan(d) else d), n
    if err == 0.0:
        return None, 0.0
    return where, err / scale if scale > 0 else math.inf


def _train_step(side: Side, inputs: Any, targets: Any, loss_fn: LossFn, seed: int,
                threshold: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model = side.model
    model.train()
    if side.optimizer is not None:
        side.optimizer.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=_devices(model)):
        torch.manual_seed(seed)
        out = call_model(model, inputs)
        loss = loss_fn(out, targets)
    loss.backward()
    noise = _noise_entries(side.gauged, threshold)
    if side.max_grad_norm:
        clip_grad_norm_(side.gauged, side.max_grad_norm)
    if side.optimizer is not None:
        side.optimizer.step()
    for sched in side.schedulers:
        sched.step()
    return loss.detach(), primary_output(out).detach(), noise


def run_side_by_side(
    a: Side,
    b: Side,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    steps: int,
    dtype: torch.dtype,
    tolerance: float | None = None,
    expected_bit_identical: bool = False,
    function_inputs: Any = None,
    seed: int = 0,
    progress: bool = False,
) -> EquivalenceReport:
    """Train ``a`` and ``b`` for ``steps`` steps on ``batches`` and compare them after each.

    ``function_inputs`` (default: the first batch's inputs) are fed to both models in eval mode
    before training: the function check. The report's verdict holds the function check, the
    loss, the logits and the effective weights to ``tolerance`` (default: from the dtype,
    tolerance.py) and, with ``expected_bit_identical``, requires identical bits.
    """
    tol = default_tolerance(dtype) if tolerance is None else float(tolerance)
    threshold = noise_threshold(dtype)
    batch_list: Sequence[Batch] = list(batches)
    if not batch_list:
        raise ValueError("no batches to train on")
    first_inputs = batch_list[0][0] if function_inputs is None else function_inputs
    function, identical = compare_function(a.model, b.model, first_inputs)
    rows: list[dict[str, Any]] = []
    worst = {key: 0.0 for key in QUANTITIES}
    worst_tensor: str | None = None
    skip: dict[str, torch.Tensor] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="verify", unit="step", leave=False)
    try:
        for step in range(steps):
            inputs, targets = batch_list[step % len(batch_list)]
            la, oa, na = _train_step(a, inputs, targets, loss_fn, seed + step, threshold)
            lb, ob, nb = _train_step(b, inputs, targets, loss_fn, seed + step, threshold)
            for name in set(na) | set(nb):
                mask = na.get(name, nb.get(name)) | nb.get(name, na.get(name))
                skip[name] = skip[name] | mask if name in skip else mask
            wa, wb = a.gauged.effective_parameters(), b.gauged.effective_parameters()
            name, w_diff = _weights_diff(wa, wb, skip)
            row = {"step": step, "loss_a": la.item(), "loss_b": lb.item(),
                   "loss": rel_diff(la, lb), "logits": rel_diff(oa, ob), "weights": w_diff,
                   "worst_tensor": name}
            identical = identical and torch.equal(la, lb) and oa.shape == ob.shape and \
                torch.equal(oa, ob) and all(torch.equal(wa[n], wb[n]) for n in wa)
            if w_diff > worst["weights"]:
                worst_tensor = name
            for key in QUANTITIES:
                worst[key] = max(worst[key], row[key])
            rows.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(logits=f"{row['logits']:.1e}", W=f"{w_diff:.1e}")
    finally:
        if bar is not None:
            bar.close()
    within = function <= tol and all(v <= tol for v in worst.values())
    return EquivalenceReport(
        a=a.label, b=b.label, dtype=str(dtype).replace("torch.", ""), steps=len(rows),
        function=function, per_step=rows, max_rel_diff=worst, tolerance=tol,
        equivalent=within and (identical or not expected_bit_identical), bit_identical=identical,
        expected_bit_identical=expected_bit_identical, worst_tensor=worst_tensor,
        noise_entries=int(sum(int(m.sum()) for m in skip.values())),
    )
