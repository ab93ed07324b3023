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
With ``window=k`` the verdict uses the slope over the k widest widths only (finite-width
corrections fade with width; the full-range slope is still reported). ``probe="train"``
measures on the training batch instead of held-out inputs.

Attention (hf/attention.py: logit scale ~ 1/d at every richness). A query or key projection
(``q_proj``, ``k_proj``, ``query``, ``key``, ... : ``QK_NAMES``) receives, at init, a gradient
n^-1/2 times a hidden representation's: dL/dq = s * sum_j (dL/dl_j) k_j with s ~ 1/d ~ 1/n and
dL/dl_j an incoherent sum of n terms of size n^-(1/2 + r). Hence its first-step loss share
falls like n^-1/2 with Adam (decrease ~ lr * sum |g|, the step being sign-like) and n^-1 with
SGD (~ lr * |g|^2), and with SGD its own update is n^-1/2 times the change its input brings
(own-update share slope -1/2; Adam normalises the step: 0). Its representation still moves by
n^(r - 1/2) (through its input). A fused projection (GPT-2's ``c_attn``: ``FUSED_PARTS``) is
also reported per part, ``c_attn[q]``, ``c_attn[k]``, ``c_attn[v]`` (consecutive blocks of its
output features), and its shares are judged per part: the whole mixes falling q, k shares with
a constant v share.
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

__all__ = ["CoordCheckConfig", "CoordCheckReport", "coord_check", "mlp_factory", "DESIDERATA",
           "QK_NAMES"]

DESIDERATA = {
    "rms_h_init": "D0", "rms_h_final": "D0", "output_change": "D1", "loss_share": "D2",
    "own_update_share": "D3", "feature_change": "richness",
}

# last name component of a query or key projection (a 1/d-scaled logit's bilinear inputs)
QK_NAMES = frozenset({"q_proj", "k_proj", "query", "key", "q_attn", "q_lin", "k_lin", "wq", "wk",
                      "to_q", "to_k", "[q]", "[k]"})
# fused projections, reported also per part: equal consecutive blocks of the output features
FUSED_PARTS = {"c_attn": ("q", "k", "v")}  # GPT-2's Conv1D [in, 3n]: q | k | v


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
    window: int | None = None  # verdicts on the slope over the `window` widest widths
    probe: str = "held-out"  # measure on held-out inputs, or on the training batch ("train")


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
                       cfg.optimizer, dtype=dtype, seed=seed, form="materialized")
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


def _parts(path: str) -> tuple[str, ...]:
    return FUSED_PARTS.get(path.rpartition(".")[2], ())


def _split(t: torch.Tensor, k: int, axis: int = -1) -> tuple[torch.Tensor, ...]:
    return torch.chunk(t, k, dim=axis) if k else ()


def _run(gm: GaugedModel, cfg: CoordCheckConfig, data: Dataset, lr: float, seed: int,
         lr_scale: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    layers = _layers(gm)
    gen = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(data.x.shape[0], generator=gen)
    train_x, train_y = data.x[idx[: cfg.batch_size]], data.y[idx[: cfg.batch_size]]
    probe = data.x[idx[cfg.batch_size: 2 * cfg.batch_size]] if cfg.probe == "held-out" else train_x
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
            for path, module, w in layers:
                out[path]["loss_share"] = dots[path] / total
                out[path]["grad_rms"] = _rms(grads[w])
                parts = _parts(path)
                axis = 0 if isinstance(module, nn.Linear) else -1  # the output features
                for name, g, dw in zip(parts, _split(grads[w], len(parts), axis),
                                       _split(after[w] - before[w], len(parts), axis)):
                    out[f"{path}[{name}]"] = {"loss_share": abs((g * dw).sum().item()) / total,
                                              "grad_rms": _rms(g)}
        f, _, _ = _record(gm, layers, probe)
        df.append(_rms(f - prev))
        prev = f
    f_final, h1, x1 = _record(gm, layers, probe)
    w1 = gm.effective_parameters()
    for path, module, w in layers:
        parts = _parts(path)
        own = _own_term(module, w1[w] - w0[w], x1[path])
        blocks = [(path, h0[path].double(), h1[path].double(), own)]
        blocks += [(f"{path}[{name}]", *b) for name, *b in zip(
            parts, _split(h0[path].double(), len(parts)), _split(h1[path].double(), len(parts)),
            _split(own, len(parts)))]
        for key, a, b, o in blocks:
            dh = b - a
            out[key].update(
                rms_h_init=_rms(a), rms_h_final=_rms(b),
                feature_change=_rms(dh) / max(_rms(a), 1e-300),
                own_update_share=_rms(o) / max(_rms(dh), 1e-300),
                output_change=sum(df) / len(df),
            )
    return out


def _own_term(module: nn.Module, dw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layer's own weight-update term dW applied to its (new) input."""
    x = x.double()
    if isinstance(module, nn.Linear):
        return x @ dw.T
    if any(klass.__name__ == "Conv1D" for klass in type(module).__mro__):  # gauged: a subclass
        return x @ dw
    if isinstance(module, nn.Embedding):
        return nn.functional.embedding(x.long(), dw)
    raise TypeError(f"no own-update rule for {type(module).__name__}")


def _expected(quantity: str, role: str, r: float, layer: str = "",
              optimizer: str = "sgd") -> float | None:
    adam = optimizer.lower() != "sgd"
    last = layer.rpartition(".")[2]
    if last in FUSED_PARTS and quantity in ("loss_share", "own_update_share"):
        return None  # a mixture of q, k (falling) and v (constant): judged per part
    if role == "hidden" and (last in QK_NAMES or layer[-3:] in QK_NAMES):  # module docstring
        if quantity == "loss_share":
            return -0.5 if adam else -1.0
        if quantity == "own_update_share":
            return 0.0 if adam else -0.5
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
    if cfg.probe not in ("held-out", "train"):
        raise ValueError(f"probe={cfg.probe!r}: 'held-out' or 'train'")
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
            for name in _parts(path):
                roles[f"{path}[{name}]"] = roles[path]
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
            judged, judged_err, window_slope = slope, stderr, None
            if cfg.window is not None and cfg.window < len(cfg.widths):
                k = cfg.window
                judged, judged_err = slope_over_seeds(cfg.widths[-k:], [s[-k:] for s in series])
                window_slope = judged
            expected = _expected(q, roles[layer], cfg.richness, layer, cfg.optimizer)
            tol = max(cfg.tolerance, 3 * judged_err)
            ok = None if expected is None else abs(judged - expected) <= tol
            results[layer][q] = {
                "slope": slope, "expected": expected, "stderr": judged_err, "pass": ok,
                "window_slope": window_slope,
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
                "slope": st["slope"] if st["window_slope"] is None else st["window_slope"],
                "expected": st["expected"],
            })
    return CoordCheckReport(
        config=asdict(cfg) | {"lr": lr}, layers=layers, roles=roles, results=results,
        verdicts=verdicts, passed=all(v["pass"] for v in verdicts.values()),
        seconds=time.perf_counter() - start, raw=raw,
    )


def format_report(report: CoordCheckReport) -> str:
    c = report.config
    window = c.get("window")
    name_w = max([12] + [len(layer) for layer in report.layers])
    lines = [
        f"coordinate check: r={c['richness']:g} gauge={c['gauge']} optimizer={c['optimizer']} "
        f"lr={c['lr']:g} widths={list(c['widths'])} seeds={c['seeds']} steps={c['steps']}"
        + (f" window={window}" if window else ""),
        "",
        f"{'layer':<{name_w}} {'role':<8} {'quantity':<18} {'slope':>8}"
        + (f" {'window':>8}" if window else "") + f" {'+-':>6} {'expected':>9}  verdict",
    ]
    for layer in report.layers:
        for q, st in report.results[layer].items():
            exp = "" if st["expected"] is None else f"{st['expected']:+.3f}"
            verdict = "" if st["pass"] is None else ("ok" if st["pass"] else "FAIL")
            win = "" if not window else (
                f" {'':>8}" if st.get("window_slope") is None else f" {st['window_slope']:+8.3f}")
            lines.append(f"{layer:<{name_w}} {report.roles[layer]:<8} {q:<18} {st['slope']:+8.3f}"
                         f"{win} {st['stderr']:6.3f} {exp:>9}  {verdict}")
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
