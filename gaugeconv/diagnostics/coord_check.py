"""Coordinate check with fitted exponents and desiderata verdicts (THEORY.md section 7).

A model family (a factory width -> GaugedModel) is trained for a few steps at several widths and
seeds. For every layer (every module that owns a matrix) we record, on held-out probe inputs:

======================  ==========================================  ================  =====
quantity                meaning                                     expected slope    check
======================  ==========================================  ================  =====
rms_h_init              RMS of the layer's output h at init          0 (hidden), -r    D0
                                                                     (readout)
rms_h_final             RMS(h) after training                        0 (hidden)        D0
feature_change          RMS(dh)/RMS(h) after the steps               r - 1/2 (hidden)  richness
own_update_share        RMS(dW x) / RMS(dh), the layer's own term    0                 D3
loss_share              |<grad W, dW>| / sum over layers (1st step)  0                 D2
output_change           RMS(df) per step (readout layer)             0                 D1
grad_rms                RMS of the effective gradient dL/dW          (reported)
======================  ==========================================  ================  =====

Slopes are fitted in log-log against width per seed; the verdict compares the mean slope with
the theory within a tolerance (default 0.15, widened to 3 standard errors when seeds disagree).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import Dataset, load_data
from ..mlp import build_mlp
from ..model import GaugedModel
from .fit import slope_over_seeds

__all__ = ["CoordCheckConfig", "CoordCheckReport", "coord_check", "mlp_factory", "DESIDERATA"]

DESIDERATA = {
    "rms_h_init": "D0", "rms_h_final": "D0", "output_change": "D1", "loss_share": "D2",
    "own_update_share": "D3", "feature_change": "richness",
}


@dataclass
class CoordCheckConfig:
    richness: float = 0.5
    gauge: str = "stp"
    optimizer: str = "sgd"
    widths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    seeds: int = 3
    steps: int = 3
    lr: float | None = None
    depth: int = 3
    data: str = "digits"
    batch_size: int = 64
    tolerance: float = 0.15
    dtype: str = "float32"


@dataclass
class CoordCheckReport:
    config: dict[str, Any]
    layers: list[str]
    roles: dict[str, str]
    results: dict[str, dict[str, dict[str, Any]]]  # layer -> quantity -> stats
    verdicts: dict[str, dict[str, Any]]
    passed: bool
    seconds: float
    raw: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("raw")
        return out


NEGATIVE_CONTROLS = {
    "sp": "standard parameterization: r = 0 init, one global learning rate for every layer",
    "readout-too-large": "readout drawn with variance 1/fan_in instead of 1/(alpha^2 fan_in)",
    "hidden-lr": "the hidden layer's learning rate divided by n",
}


def negative_lr_scale(variant: str | None) -> Callable[[GaugedModel], dict[str, float]] | None:
    """Per-tensor learning-rate factors of a broken family (None: none)."""
    if variant == "sp":  # one global lr: undo every per-tensor lr factor
        return lambda gm: {n: 1.0 / p.lr_factor for n, p in gm.plans.items()}
    if variant == "hidden-lr":
        return lambda gm: {"layers.1.weight": 1.0 / gm.parameterization.width}
    return None


def mlp_factory(cfg: CoordCheckConfig, data: Dataset, variant: str | None = None
                ) -> Callable[[int, int], GaugedModel]:
    """The reference MLP in (r, gauge); ``variant`` builds a deliberately broken family."""
    if variant is not None and variant not in NEGATIVE_CONTROLS:
        raise ValueError(f"unknown negative control {variant!r}; known: {list(NEGATIVE_CONTROLS)}")
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    richness = 0.0 if variant == "sp" else cfg.richness

    def factory(width: int, seed: int) -> GaugedModel:
        gm = build_mlp(data.d_in, data.d_out, width, cfg.depth, richness, cfg.gauge,
                       cfg.optimizer, dtype=dtype, seed=seed)
        if variant == "readout-too-large":  # readout drawn at 1/fan_in instead of 1/(a^2 fan_in)
            last = gm.module.layers[-1].weight
            with torch.no_grad():
                last.mul_(gm.parameterization.richness.alpha(width))
        return gm

    return factory


def _layers(gm: GaugedModel) -> list[tuple[str, nn.Module, str]]:
    """(module path, module, stored tensor name) of every module using a >=2-d weight.

    A tied tensor appears once per module that uses it (GPT-2's wte and lm_head).
    """
    out = []
    for path, module in gm.module.named_modules(remove_duplicate=False):
        w = module._parameters.get("weight")
        if w is not None and w.ndim >= 2:
            out.append((path, module, gm.uses[f"{path}.weight" if path else "weight"]))
    return out


def _tensor(out: Any) -> torch.Tensor:
    """The output tensor of a model call (Hugging Face outputs: their logits)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item()


def _record(gm, layers, x):
    """Outputs and inputs of every layer on x."""
    outs, ins, handles = {}, {}, []
    for path, module, _ in layers:
        def hook(mod, args, out, path=path):
            ins[path] = args[0].detach()
            outs[path] = out.detach()
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            f = _tensor(gm.module(x)).detach()
    finally:
        for h in handles:
            h.remove()
    return f, outs, ins


def _run(gm: GaugedModel, cfg: CoordCheckConfig, data: Dataset, lr: float, seed: int,
         lr_scale: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    layers = _layers(gm)
    gen = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(data.x.shape[0], generator=gen)
    train_x, train_y = data.x[idx[: cfg.batch_size]], data.y[idx[: cfg.batch_size]]
    probe = data.x[idx[cfg.batch_size: 2 * cfg.batch_size]]
    opt = gm.make_optimizer(cfg.optimizer, lr)
    for g in opt.param_groups:  # broken families for negative controls
        g["lr"] *= (lr_scale or {}).get(g["param_names"][0], 1.0)
    f0, h0, _ = _record(gm, layers, probe)
    w0 = gm.effective_parameters()
    out = {path: {} for path, _, _ in layers}
    df, prev = [], f0
    for step in range(cfg.steps):
        opt.zero_grad()
        loss = data.loss(_tensor(gm.module(train_x)), train_y)
        loss.backward()
        if step == 0:
            before = gm.effective_parameters()
            grads = {n: p.grad.double() / gm.multipliers[n] for n, p in gm.module.named_parameters()}
        opt.step()
        if step == 0:
            after = gm.effective_parameters()
            dots = {path: abs((grads[w] * (after[w] - before[w])).sum().item())
                    for path, _, w in layers}
            total = sum(dots.values()) or 1.0
            for path, _, w in layers:
                out[path]["loss_share"] = dots[path] / total
                out[path]["grad_rms"] = _rms(grads[w])
        f, _, _ = _record(gm, layers, probe)
        df.append(_rms(f - prev))
        prev = f
    f_final, h1, x1 = _record(gm, layers, probe)
    w1 = gm.effective_parameters()
    for path, module, w in layers:
        dh = h1[path].double() - h0[path].double()
        own = _own_term(module, w1[w] - w0[w], x1[path])
        out[path].update(
            rms_h_init=_rms(h0[path]), rms_h_final=_rms(h1[path]),
            feature_change=_rms(dh) / max(_rms(h0[path]), 1e-300),
            own_update_share=own / max(_rms(dh), 1e-300),
            output_change=sum(df) / len(df),
        )
    return out


def _own_term(module: nn.Module, dw: torch.Tensor, x: torch.Tensor) -> float:
    """RMS of the layer's own weight-update term dW applied to its (new) input."""
    x = x.double()
    if isinstance(module, nn.Linear):
        return _rms(x @ dw.T)
    if type(module).__name__ == "Conv1D":
        return _rms(x @ dw)
    if isinstance(module, nn.Embedding):
        return _rms(nn.functional.embedding(x.long(), dw))
    raise TypeError(f"no own-update rule for {type(module).__name__}")


def _expected(quantity: str, role: str, r: float) -> float | None:
    if quantity == "rms_h_init":  # hidden representations O(1); the output ~ 1/alpha ~ n^-r
        return 0.0 if role in ("readin", "hidden") else -r if role == "readout" else None
    if quantity == "rms_h_final":
        return 0.0 if role in ("readin", "hidden") else None
    if quantity == "feature_change":
        return r - 0.5 if role in ("readin", "hidden") else None
    if quantity == "own_update_share":
        return 0.0 if role in ("readin", "hidden") else None
    if quantity == "loss_share":
        return 0.0
    if quantity == "output_change":
        return 0.0 if role == "readout" else None
    return None


def coord_check(
    cfg: CoordCheckConfig,
    factory: Callable[[int, int], GaugedModel] | None = None,
    data: Dataset | None = None,
    lr_scale: Callable[[GaugedModel], dict[str, float]] | None = None,
    progress: bool = False,
) -> CoordCheckReport:
    """Run the check; ``factory(width, seed)`` defaults to the reference MLP of ``cfg``."""
    start = time.perf_counter()
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    data = data or load_data(cfg.data, dtype)
    factory = factory or mlp_factory(cfg, data)
    lr = cfg.lr if cfg.lr is not None else {"sgd": 0.5, "adam": 0.05}[cfg.optimizer]
    raw: dict[str, dict[str, list[list[float]]]] = {}
    roles: dict[str, str] = {}
    runs = [(seed, w) for seed in range(cfg.seeds) for w in cfg.widths]
    it = runs
    if progress:
        from tqdm import tqdm

        it = tqdm(runs, desc="coord-check", unit="run", leave=False)
    per_seed: dict[int, dict[int, Any]] = {}
    for seed, width in it:
        torch.manual_seed(seed)
        gm = factory(width, seed)
        for path, _, w in _layers(gm):
            roles[path] = gm.plans[w].spec.role.value
        per_seed.setdefault(seed, {})[width] = _run(
            gm, cfg, data, lr, seed, lr_scale(gm) if lr_scale else None)
    layers = list(roles)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    quantities = list(DESIDERATA) + ["grad_rms"]
    for layer in layers:
        results[layer] = {}
        raw[layer] = {}
        for q in quantities:
            series = [[per_seed[s][w][layer][q] for w in cfg.widths] for s in range(cfg.seeds)]
            raw[layer][q] = series
            slope, stderr = slope_over_seeds(cfg.widths, series)
            expected = _expected(q, roles[layer], cfg.richness)
            tol = max(cfg.tolerance, 3 * stderr)
            ok = None if expected is None else abs(slope - expected) <= tol
            results[layer][q] = {
                "slope": slope, "expected": expected, "stderr": stderr, "pass": ok,
                "values": [sum(col) / len(col) for col in zip(*series)],
            }
    for q, name in DESIDERATA.items():
        checked = [(layer, results[layer][q]) for layer in layers
                   if results[layer][q]["pass"] is not None]
        failing = [(layer, st) for layer, st in checked if not st["pass"]]
        verdict = verdicts.setdefault(name, {"pass": True, "failures": []})
        for layer, st in failing:
            verdict["pass"] = False
            verdict["failures"].append({
                "layer": layer, "role": roles[layer], "quantity": q,
                "slope": st["slope"], "expected": st["expected"],
            })
    return CoordCheckReport(
        config=asdict(cfg) | {"lr": lr}, layers=layers, roles=roles, results=results,
        verdicts=verdicts, passed=all(v["pass"] for v in verdicts.values()),
        seconds=time.perf_counter() - start, raw=raw,
    )


def format_report(report: CoordCheckReport) -> str:
    c = report.config
    lines = [
        f"coordinate check: r={c['richness']:g} gauge={c['gauge']} optimizer={c['optimizer']} "
        f"lr={c['lr']:g} widths={list(c['widths'])} seeds={c['seeds']} steps={c['steps']}",
        "",
        f"{'layer':<12} {'role':<8} {'quantity':<18} {'slope':>8} {'+-':>6} {'expected':>9}  verdict",
    ]
    for layer in report.layers:
        for q, st in report.results[layer].items():
            exp = "" if st["expected"] is None else f"{st['expected']:+.3f}"
            verdict = "" if st["pass"] is None else ("ok" if st["pass"] else "FAIL")
            lines.append(f"{layer:<12} {report.roles[layer]:<8} {q:<18} {st['slope']:+8.3f} "
                         f"{st['stderr']:6.3f} {exp:>9}  {verdict}")
    lines.append("")
    for name, v in report.verdicts.items():
        if v["pass"]:
            lines.append(f"{name:<9} pass")
        else:
            worst = ", ".join(f"{f['layer']} ({f['role']}) {f['quantity']}: slope {f['slope']:+.2f}"
                              f" vs {f['expected']:+.2f}" for f in v["failures"])
            lines.append(f"{name:<9} FAIL  {worst}")
    lines.append(f"\n{'all desiderata hold' if report.passed else 'some desiderata fail'} "
                 f"({report.seconds:.1f} s)")
    return "\n".join(lines)
