"""Proof by trajectories: train two parameterizations side by side on the same batches.

Run A trains in gauge A. Run B either starts in gauge B from the same seed (identical effective
init), or, with ``convert_at=t``, starts as an exact copy of run A and is converted (model,
optimizer state and LR scheduler) to gauge B just before step t. Per step we record the largest
relative difference of the loss, the outputs and the effective weights W = m*w, where the
relative difference of two tensors is max|a - b| / max(max|a|, max|b|).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .data import load_data
from .equivalence.engine import rel_diff  # max|a-b| / max(max|a|, max|b|); NaN -> inf
from .errors import GaugeError
from .gauges import resolve_point
from .mlp import build_mlp
from .model import GaugedModel, optimizer_class
from .richness import Family, check_gamma

__all__ = ["VerifyConfig", "VerifyReport", "verify", "rel_diff", "DEFAULT_LR", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_LR = {"sgd": 0.5, "adam": 0.5, "adamw": 0.5}
DEFAULT_TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


@dataclass
class VerifyConfig:
    richness: float | None = None
    gamma: float = 1.0
    from_gauge: str = "stp"
    to_gauge: str = "mup"
    optimizer: str = "sgd"
    steps: int = 50
    width: int = 256
    depth: int = 3
    dtype: str = "float64"
    convert_at: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-3
    eps: float = 1e-8
    batch_size: int = 64
    data: str = "digits"
    activation: str = "tanh"
    seed: int = 0
    tolerance: float | None = None
    negative_control: str | None = None  # "eps" or "lr": break that rule on run B
    # further conversions of run B after convert_at: (step, gauge) pairs, in step order
    then: tuple[tuple[int, str], ...] = ()


@dataclass
class VerifyReport:
    config: dict[str, Any]
    data: str
    steps: int
    max_rel_diff: dict[str, float]
    tolerance: float
    equivalent: bool
    bit_identical: bool
    per_step: list[dict[str, float]] = field(default_factory=list)
    final_loss: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _resolve(cfg: VerifyConfig) -> tuple[Any, Any, float]:
    check_gamma(cfg.gamma)  # up front (r is checked by resolve_point)
    ga, ra = resolve_point(cfg.from_gauge, cfg.richness)
    gb, rb = resolve_point(cfg.to_gauge, cfg.richness if cfg.richness is not None else ra)
    if ra is not None and rb is not None and ra != rb:
        raise GaugeError(
            f"{cfg.from_gauge!r} is at r={ra} but {cfg.to_gauge!r} is at r={rb}: "
            "a gauge change keeps the richness fixed"
        )
    r = next((x for x in (ra, rb) if x is not None), 0.5)
    return ga, gb, r


def _optimizer(gm: GaugedModel, cfg: VerifyConfig, lr: float, broken: bool):
    cls = optimizer_class(cfg.optimizer)
    hyper: dict[str, Any] = {"weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        hyper["momentum"] = cfg.momentum
    else:
        hyper["eps"] = cfg.eps
    rule = gm.rule_for(cls)
    if broken and cfg.negative_control:
        rule = rule.without(cfg.negative_control)
    opt = gm.make_optimizer(cls, lr, rule=rule, **hyper)
    warm = max(1, cfg.steps // 10)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 10%
        if step < warm:
            return (step + 1) / warm
        return max(0.1, 1.0 - 0.9 * (step - warm) / max(1, cfg.steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule), rule


def verify(cfg: VerifyConfig, progress: bool = False) -> VerifyReport:
    """Train run A and run B side by side and compare them step by step."""
    dtype = DTYPES[cfg.dtype]
    ga, gb, r = _resolve(cfg)
    family = Family.parse(cfg.optimizer)
    data = load_data(cfg.data, dtype)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    tol = cfg.tolerance if cfg.tolerance is not None else DEFAULT_TOLERANCE[cfg.dtype]

    def build(gauge):
        return build_mlp(
            data.d_in, data.d_out, cfg.width, cfg.depth, r, gauge, family, cfg.gamma,
            cfg.activation, dtype=dtype, seed=cfg.seed, form="materialized",
        )

    a = build(ga)
    b = build(ga if cfg.convert_at is not None else gb)
    opt_a, sched_a, _ = _optimizer(a, cfg, lr, broken=False)
    opt_b, sched_b, rule_b = _optimizer(b, cfg, lr, broken=cfg.convert_at is None)
    if cfg.convert_at is not None and cfg.negative_control:
        rule_b = b.rule_for(opt_b).without(cfg.negative_control)

    worst = {"loss": 0.0, "output": 0.0, "weights": 0.0}
    identical = True
    rows = []
    batches = data.batches(cfg.steps, cfg.batch_size, seed=cfg.seed + 1)
    iterator = enumerate(batches)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=cfg.steps, desc="verify", unit="step", leave=False)
    loss_a = loss_b = torch.zeros(())
    conversions = dict(cfg.then)
    if cfg.convert_at is not None:
        conversions[cfg.convert_at] = gb
    for step, (x, y) in iterator:
        if step in conversions:
            b.convert(conversions[step], optimizer=opt_b, schedulers=[sched_b], rule=rule_b)
        outs = []
        for gm, opt, sched in ((a, opt_a, sched_a), (b, opt_b, sched_b)):
            opt.zero_grad(set_to_none=True)
            out = gm.module(x)
            loss = data.loss(out, y)
            loss.backward()
            opt.step()
            sched.step()
            outs.append((out.detach(), loss.detach()))
        (out_a, loss_a), (out_b, loss_b) = outs
        wa, wb = a.effective_parameters(), b.effective_parameters()
        row = {
            "step": step,
            "loss_a": loss_a.item(),
            "loss_b": loss_b.item(),
            "loss": rel_diff(loss_a, loss_b),
            "output": rel_diff(out_a, out_b),
            "weights": max(rel_diff(wa[k], wb[k]) for k in wa),
        }
        identical = identical and torch.equal(out_a, out_b) and torch.equal(loss_a, loss_b)
        identical = identical and all(torch.equal(wa[k], wb[k]) for k in wa)
        for key in worst:
            worst[key] = max(worst[key], row[key])
        rows.append(row)
    cfg_out = asdict(cfg)
    cfg_out.update({"richness": r, "lr": lr, "from_gauge": ga.name, "to_gauge": gb.name})
    return VerifyReport(
        config=cfg_out,
        data=data.description,
        steps=len(rows),
        max_rel_diff=worst,
        tolerance=tol,
        equivalent=all(v <= tol for v in worst.values()),
        bit_identical=identical,
        per_step=rows,
        final_loss={"a": loss_a.item(), "b": loss_b.item()},
    )
