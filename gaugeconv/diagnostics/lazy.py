"""The lazy limit: how far the trained network is from its trained linearization (THEORY.md s. 7).

For r < 1/2 the network approaches its linearization around init as the width grows (kernel
regression with the neural tangent kernel); for r = 1/2 it does not. Both the network f and its
first-order Taylor expansion f_lin(x; theta) = f(x; theta_0) + J(x) (theta - theta_0) are trained
by full-batch gradient descent with the same per-tensor learning rates on the same data, and we
measure on held-out inputs

    distance = ||f_T - f_lin_T|| / ||f_T - f_0||,

whose log-log slope against width should be about 2r - 1 (the square of the feature movement
n^(r - 1/2)).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.func import functional_call, jvp, vjp

from ..data import load_data
from ..mlp import build_mlp
from .fit import slope_over_seeds

__all__ = ["LazyConfig", "lazy_limit", "expected_lazy_slope"]


@dataclass
class LazyConfig:
    richness: float = 0.0
    widths: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    seeds: int = 3
    steps: int = 20
    lr: float = 0.5
    depth: int = 3
    train_size: int = 128
    test_size: int = 128
    tolerance: float = 0.15


def expected_lazy_slope(r: float) -> float:
    return 2 * r - 1


def _distance(width: int, seed: int, cfg: LazyConfig, data) -> float:
    gm = build_mlp(data.d_in, data.d_out, width, cfg.depth, cfg.richness, "stp", "sgd",
                   activation="tanh", dtype=torch.float64, seed=seed)
    model = gm.module
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(data.x.shape[0], generator=gen)
    xtr, ytr = data.x[idx[: cfg.train_size]], data.y[idx[: cfg.train_size]]
    xte = data.x[idx[cfg.train_size: cfg.train_size + cfg.test_size]]
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    lrs = {n: cfg.lr * gm.plans[n].lr_factor for n in theta0}

    def f(params, x):
        return functional_call(model, params, (x,))

    f0_tr, pullback = vjp(lambda p: f(p, xtr), theta0)
    theta = {n: t.clone() for n, t in theta0.items()}
    delta = {n: torch.zeros_like(t) for n, t in theta0.items()}
    for _ in range(cfg.steps):
        # the network: one full-batch gradient step
        params = {n: t.requires_grad_(True) for n, t in theta.items()}
        loss = data.loss(f(params, xtr), ytr)
        grads = torch.autograd.grad(loss, list(params.values()))
        theta = {n: (t - lrs[n] * g).detach() for (n, t), g in zip(params.items(), grads)}
        # its linearization: f_lin = f0 + J delta, gradient J^T dL/df
        _, jd = jvp(lambda p: f(p, xtr), (theta0,), (delta,))
        out = (f0_tr + jd).detach().requires_grad_(True)
        (g_out,) = torch.autograd.grad(data.loss(out, ytr), out)
        (g_theta,) = pullback(g_out)
        delta = {n: delta[n] - lrs[n] * g_theta[n] for n in delta}
    with torch.no_grad():
        f_init = f(theta0, xte)
        f_final = f(theta, xte)
        _, jd_te = jvp(lambda p: f(p, xte), (theta0,), (delta,))
        f_lin = f_init + jd_te
    return ((f_final - f_lin).norm() / (f_final - f_init).norm()).item()


def lazy_limit(cfg: LazyConfig, progress: bool = False) -> dict[str, Any]:
    """Distances per width and seed, the fitted slope and the verdict."""
    start = time.perf_counter()
    data = load_data("synthetic", torch.float64)
    runs = [(s, w) for s in range(cfg.seeds) for w in cfg.widths]
    if progress:
        from tqdm import tqdm

        runs = tqdm(runs, desc="lazy-limit", unit="run", leave=False)
    table: dict[int, dict[int, float]] = {}
    for seed, width in runs:
        table.setdefault(seed, {})[width] = _distance(width, seed, cfg, data)
    series = [[table[s][w] for w in cfg.widths] for s in range(cfg.seeds)]
    slope, stderr = slope_over_seeds(cfg.widths, series)
    expected = expected_lazy_slope(cfg.richness)
    ok = abs(slope - expected) <= max(cfg.tolerance, 3 * stderr)
    lazy = slope < -cfg.tolerance
    return {
        "config": asdict(cfg),
        "distance": [sum(col) / len(col) for col in zip(*series)],
        "slope": slope, "stderr": stderr, "expected": expected, "pass": ok,
        "approaches_linearization": lazy,
        "data": data.description,
        "seconds": time.perf_counter() - start,
    }
