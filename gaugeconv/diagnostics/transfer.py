"""muTransfer, measured: learning-rate sweeps across widths, the same in every gauge.

The reason to put a model at richness r = 1/2 (muP) is hyperparameter transfer (Tensor Programs
V): the base learning rate eta that is best for a narrow model is best for a wide one too,
because the effective per-tensor steps lambda(eta, n) of THEORY.md section 2 are scaled with width
so that every layer's update stays of order one (section 7). This module measures it:

* a sweep trains a family (a factory ``(width, seed) -> GaugedModel``, as for the coordinate
  check) for a fixed number of steps with a fixed schedule at every base lr of a log2 grid, at
  several widths and seeds, and records final training and held-out loss and accuracy;
* per width and seed the optimum is interpolated in log2(lr) (``optimum.interpolate_optimum``),
  and the drift d log2(lr*) / d log2(n) is fitted with its standard error over seeds;
* verdicts: the family transfers when |drift| <= max(tolerance, 3 standard errors) (the seed
  spread sets the tolerance; a spread wider than ``max_tolerance`` is "inconclusive"), and wider
  is not worse at the optimum when the best loss does not grow with width beyond 3 standard
  errors; the negative control, the standard parameterization with one global lr (SP: r = 0
  init, every tensor at lr eta), must drift;
* the same sweep run in the STP, muP and rescaling gauges of one richness is the same sweep
  (section 4: a gauge change moves stored weights, multipliers and optimizer hyperparameters
  together and leaves the effective trajectory unchanged): bit-identical at widths where every
  factor between the gauges is a power of two, equal to float rounding elsewhere.

Any training procedure can be swept: ``lr_sweep`` takes a runner ``(width, seed, lr) -> metrics``
(``mlp_runner`` builds one from a factory and a data set; the Hugging Face example builds one
around ``GaugeTrainer``) and ``analyse_sweep`` does the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data import Dataset, load_data
from ..model import GaugedModel
from .coord_check import CoordCheckConfig, _tensor, mlp_factory, negative_lr_scale
from .fit import slope_over_seeds
from .optimum import interpolate_optimum, lr_grid, optimum_drift

__all__ = [
    "TransferConfig", "Sweep", "TransferReport", "transfer_check", "lr_sweep", "mlp_runner",
    "analyse_sweep", "compare_sweeps", "split_data", "warmup_decay", "DEFAULT_LOG2_LR",
    "format_report", "METRICS",
]

Runner = Callable[[int, int, float], dict[str, float]]
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "init_loss")
# base-lr grids (log2) that hold the optima of the family and of SP at widths 64-2048 (measured)
DEFAULT_LOG2_LR = {"sgd": (-4.0, 5.0), "adam": (-9.0, 3.0)}


@dataclass
class TransferConfig:
    richness: float = 0.5
    optimizer: str = "sgd"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    log2_lr: tuple[float, float] | None = None  # grid ends; default DEFAULT_LOG2_LR[optimizer]
    per_octave: int = 2
    seeds: int = 2
    steps: int = 60
    batch_size: int = 64
    depth: int = 3
    data: str = "digits"
    test_fraction: float = 0.25
    warmup: float = 0.1  # fraction of steps of linear warm-up, then linear decay to 0
    momentum: float = 0.0  # SGD; plain SGD's optimum sits at its edge of stability
    eps: float = 1e-8  # Adam, effective space
    metric: str = "train_loss"  # what the optimum minimises
    tolerance: float = 0.1  # floor of the drift tolerance (per doubling of width)
    max_tolerance: float = 0.3  # a seed spread wider than this makes "stable" inconclusive
    gauge_tolerance: float = 1e-3  # median relative difference allowed off powers of two
    stop_after_diverged: int = 2  # consecutive diverged lrs after which larger ones are skipped
    dtype: str = "float32"

    def lrs(self) -> list[float]:
        lo, hi = self.log2_lr or DEFAULT_LOG2_LR.get(self.optimizer, DEFAULT_LOG2_LR["adam"])
        return lr_grid(lo, hi, self.per_octave)


@dataclass
class Sweep:
    """Raw results of one sweep: metrics[name][seed][width index][lr index] (NaN: diverged)."""

    label: str
    widths: list[int]
    lrs: list[float]
    seeds: int
    metrics: dict[str, list[list[list[float]]]]
    skipped: int = 0  # runs not trained because smaller lrs had diverged
    analysis: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TransferReport:
    config: dict[str, Any]
    sweeps: dict[str, Sweep]
    gauge_check: dict[str, Any]
    verdicts: dict[str, Any]
    passed: bool
    seconds: float
    data: str

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sweeps"] = {k: s.to_json() for k, s in self.sweeps.items()}
        return _json_safe(out)


def _json_safe(obj: Any) -> Any:
    """NaN and inf as null / strings, so the output is standard JSON."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# -- training ---------------------------------------------------------------------------------

def split_data(data: Dataset, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A fixed train / held-out split (the same for every run)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(data.x.shape[0], generator=gen)
    n_test = max(1, round(test_fraction * len(idx)))
    parts = idx[n_test:], idx[:n_test]
    return tuple(Dataset(data.x[i], data.y[i], data.task, data.description) for i in parts)


def warmup_decay(steps: int, warmup: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over a fraction of the steps, then linear decay to 0."""
    warm = max(1, round(warmup * steps))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return schedule


@torch.no_grad()
def _evaluate(gm: GaugedModel, data: Dataset) -> tuple[float, float]:
    out = _tensor(gm.module(data.x))
    loss = data.loss(out, data.y).item()
    acc = (out.argmax(-1) == data.y).double().mean().item() if data.task == "classification" \
        else math.nan
    return loss, acc


def mlp_runner(
    factory: Callable[[int, int], GaugedModel],
    train: Dataset,
    test: Dataset,
    cfg: TransferConfig,
    lr_scale: Callable[[GaugedModel], dict[str, float]] | None = None,
) -> Runner:
    """``(width, seed, lr) -> metrics``: train factory(width, seed) for cfg.steps minibatch steps.

    The optimizer is cfg.optimizer with the model's per-tensor groups (``make_optimizer``: lr,
    eps moved into the gauge); ``lr_scale`` multiplies groups' lrs (broken families such as
    SP). The minibatches depend on the seed only, so every lr and every gauge sees the same ones.
    A non-finite training loss stops the run: it diverged, and every metric is NaN.
    ``init_loss`` is the training-set loss before the first step.
    """

    def run(width: int, seed: int, lr: float) -> dict[str, float]:
        gm = factory(width, seed)
        hyper = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {"eps": cfg.eps}
        opt = gm.make_optimizer(cfg.optimizer, lr, **hyper)
        scale = lr_scale(gm) if lr_scale else {}
        for g in opt.param_groups:
            g["lr"] *= scale.get(g["param_names"][0], 1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_decay(cfg.steps, cfg.warmup))
        init_loss = _evaluate(gm, train)[0]
        nan = dict.fromkeys(METRICS, math.nan) | {"init_loss": init_loss}
        for x, y in train.batches(cfg.steps, cfg.batch_size, seed=1000 + seed):
            opt.zero_grad(set_to_none=True)
            loss = train.loss(_tensor(gm.module(x)), y)
            if not torch.isfinite(loss):
                return dict(nan)
            loss.backward()
            opt.step()
            sched.step()
        train_loss, train_acc = _evaluate(gm, train)
        test_loss, test_acc = _evaluate(gm, test)
        if not math.isfinite(train_loss):
            return dict(nan)
        return {"train_loss": train_loss, "test_loss": test_loss, "train_acc": train_acc,
                "test_acc": test_acc, "init_loss": init_loss}

    return run


def lr_sweep(
    runner: Runner,
    widths: Sequence[int],
    lrs: Sequence[float],
    seeds: int,
    label: str = "sweep",
    stop_after_diverged: int = 2,
    bar: Any = None,
) -> Sweep:
    """Run every (seed, width, lr), lrs in increasing order.

    A run has blown up when its final training loss is not finite or above its loss at init
    (``init_loss``, when the runner reports it). After ``stop_after_diverged`` consecutive blown-up
    lrs (0: never) the larger lrs of that width and seed are not trained and recorded as
    diverged, NaN (``skipped`` counts them).
    """
    lrs = sorted(lrs)
    metrics = {m: [[[math.nan] * len(lrs) for _ in widths] for _ in range(seeds)] for m in METRICS}
    skipped = 0
    for seed in range(seeds):
        for wi, width in enumerate(widths):
            run_of_nans = 0
            for li, lr in enumerate(lrs):
                if stop_after_diverged and run_of_nans >= stop_after_diverged:
                    skipped += 1
                else:
                    out = runner(width, seed, lr)
                    for m in METRICS:
                        metrics[m][seed][wi][li] = float(out.get(m, math.nan))
                    final = metrics["train_loss"][seed][wi][li]
                    blown = not math.isfinite(final) or final > metrics["init_loss"][seed][wi][li]
                    run_of_nans = run_of_nans + 1 if blown else 0
                if bar is not None:
                    bar.update(1)
    return Sweep(label, list(widths), list(lrs), seeds, metrics, skipped)


# -- analysis ---------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return math.nan if any(not math.isfinite(v) for v in values) else sum(values) / len(values)


def analyse_sweep(sweep: Sweep, metric: str = "train_loss", tolerance: float = 0.1,
                  max_tolerance: float = 0.3) -> dict[str, Any]:
    """Optima, drift, best loss per width and the verdicts of one sweep (stored in sweep.analysis).

    ``transfer``: "stable" when |drift| <= tol = max(tolerance, 3 stderr) and tol <= max_tolerance
    and no optimum sits on the grid's edge; "drifts" when |drift| > tol; else "inconclusive".
    A run whose final loss exceeds its loss at init counts as diverged for the interpolation.
    ``wider_not_worse``: the slope of ln(best loss) against ln(width), per seed, is below
    3 standard errors (at least 0.02: one seed has no spread).
    """
    log2_lrs = [math.log2(lr) for lr in sweep.lrs]
    curves = sweep.metrics[metric]
    widths = range(len(sweep.widths))
    # a run ending above its loss at init blew up (the same init for every lr of a width, seed)
    init = [[max((v for v in sweep.metrics["init_loss"][s][wi] if math.isfinite(v)),
                 default=math.nan) for wi in widths] for s in range(sweep.seeds)]
    per_seed = [[interpolate_optimum(log2_lrs, curves[s][wi], init[s][wi]) for wi in widths]
                for s in range(sweep.seeds)]
    mean_curves = [[_mean([curves[s][wi][li] for s in range(sweep.seeds)])
                    for li in range(len(sweep.lrs))] for wi in widths]
    mean_opt = [interpolate_optimum(log2_lrs, c, _mean([init[s][wi] for s in range(sweep.seeds)]))
                for wi, c in enumerate(mean_curves)]
    drift, stderr = optimum_drift(sweep.widths, [[o.log2_lr for o in row] for row in per_seed])
    tol = max(tolerance, 3 * stderr) if math.isfinite(stderr) else math.nan
    # on the grid's edge the optimum may lie beyond it; next to a blown-up lr it is resolved to
    # the grid step only (plain SGD's optimum sits at the edge of stability), which is fine
    edges = sorted({sweep.widths[wi] for row in per_seed for wi, o in enumerate(row)
                    if o.status not in ("interior", "neighbour-diverged")})
    if not math.isfinite(drift):
        verdict = "inconclusive"
    elif abs(drift) > tol:
        verdict = "drifts"
    elif tol <= max_tolerance and not edges:
        verdict = "stable"
    else:
        verdict = "inconclusive"
    best = [[o.loss for o in row] for row in per_seed]
    if all(math.isfinite(v) and v > 0 for row in best for v in row):
        best_slope, best_se = slope_over_seeds(sweep.widths, best)
    else:
        best_slope, best_se = math.nan, math.nan
    wider_not_worse = bool(math.isfinite(best_slope) and best_slope <= max(0.02, 3 * best_se))
    analysis = {
        "metric": metric,
        "log2_lr": log2_lrs,
        "mean_curves": mean_curves,
        "optimum_log2_lr": [o.log2_lr for o in mean_opt],
        "optimum_loss": [o.loss for o in mean_opt],
        "optimum_status": [o.status for o in mean_opt],
        "per_seed_optimum_log2_lr": [[o.log2_lr for o in row] for row in per_seed],
        "per_seed_status": [[o.status for o in row] for row in per_seed],
        "not_interior_at_widths": edges,
        "drift": drift, "drift_stderr": stderr, "drift_tolerance": tol,
        "transfer": verdict,
        "best_loss": [_mean([best[s][wi] for s in range(sweep.seeds)])
                      for wi in range(len(sweep.widths))],
        "per_seed_best_loss": best,
        "best_loss_slope": best_slope, "best_loss_slope_stderr": best_se,
        "wider_not_worse": wider_not_worse,
    }
    for name in ("test_loss", "train_acc", "test_acc"):  # the other metrics at the optimum
        analysis[f"{name}_at_optimum"] = [
            _mean([sweep.metrics[name][s][wi][max(o.index, 0)] if o.index >= 0 else math.nan
                   for s, o in enumerate(col)])
            for wi, col in enumerate(zip(*per_seed))
        ]
    sweep.analysis = analysis
    return analysis


def _rel(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    scale = max(abs(a), abs(b))
    return 0.0 if a == b else abs(a - b) / scale


def compare_sweeps(ref: Sweep, other: Sweep) -> dict[str, Any]:
    """Per width: are all metrics of all runs bit-identical; the largest and the median relative
    difference of the final training loss over the runs that trained (final loss finite and not
    above the loss at init in the reference); ``blown_up`` counts the runs that did not."""
    identical, worst, median, blown = [], [], [], []
    for wi in range(len(ref.widths)):
        pairs = [(ref.metrics[m][s][wi][li], other.metrics[m][s][wi][li])
                 for m in METRICS for s in range(ref.seeds) for li in range(len(ref.lrs))]
        identical.append(all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in pairs))
        rel, out = [], 0
        for s in range(ref.seeds):
            for li in range(len(ref.lrs)):
                a, b = ref.metrics["train_loss"][s][wi][li], other.metrics["train_loss"][s][wi][li]
                init = ref.metrics["init_loss"][s][wi][li]
                if math.isfinite(a) and not a > init:
                    rel.append(_rel(a, b))
                else:
                    out += 1
        rel.sort()
        worst.append(rel[-1] if rel else math.nan)
        median.append(rel[len(rel) // 2] if rel else math.nan)
        blown.append(out)
    return {"bit_identical": identical, "max_rel_diff": worst, "median_rel_diff": median,
            "blown_up": blown}


def _pow2(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


def _pow2_widths(ref: Callable[[int, int], GaugedModel], other: Callable[[int, int], GaugedModel],
                 widths: Sequence[int]) -> list[bool]:
    """Per width: is every factor s = m_other / m_ref between the two gauges a power of two?"""
    out = []
    for width in widths:
        a, b = ref(width, 0).parameterization, other(width, 0).parameterization
        out.append(all(_pow2(s) for s in a.scales_to(b).values()))
    return out


# -- the whole check --------------------------------------------------------------------------

def transfer_check(
    cfg: TransferConfig,
    gauges: Sequence[str] = ("stp", "mup", "rescaling"),
    control: bool = True,
    richness_axis: Sequence[float] = (),
    data: Dataset | None = None,
    progress: bool = False,
) -> TransferReport:
    """Sweep the reference MLP in every gauge at cfg.richness, SP as the negative control, and
    the muP gauge at each extra richness of ``richness_axis``; analyse and compare them."""
    start = time.perf_counter()
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    data = data or load_data(cfg.data, dtype)
    train, test = split_data(data, cfg.test_fraction)
    lrs = cfg.lrs()

    def family(r: float, gauge: str, variant: str | None = None):
        cc = CoordCheckConfig(richness=r, gauge=gauge, optimizer=cfg.optimizer, depth=cfg.depth,
                              dtype=cfg.dtype)
        return mlp_factory(cc, train, variant)

    plans: dict[str, tuple[Callable[[int, int], GaugedModel], Any]] = {
        g: (family(cfg.richness, g), None) for g in gauges}
    if control:  # SP lives in the STP gauge: m = 1, r = 0 init, lr eta for every tensor
        plans["sp"] = (family(0.0, "stp", "sp"), negative_lr_scale("sp"))
    for r in richness_axis:
        if r != cfg.richness:
            plans[f"r={r:g}"] = (family(r, "mup"), None)
    total = len(plans) * cfg.seeds * len(cfg.widths) * len(lrs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"transfer-check {cfg.optimizer}", unit="run", leave=False)
    sweeps: dict[str, Sweep] = {}
    try:
        for label, (factory, scale) in plans.items():
            if bar is not None:
                bar.set_postfix_str(label)
            runner = mlp_runner(factory, train, test, cfg, scale)
            sweeps[label] = lr_sweep(runner, cfg.widths, lrs, cfg.seeds, label,
                                     cfg.stop_after_diverged, bar)
            analyse_sweep(sweeps[label], cfg.metric, cfg.tolerance, cfg.max_tolerance)
    finally:
        if bar is not None:
            bar.close()

    gauge_check: dict[str, Any] = {"gauges": list(gauges)}
    if len(gauges) > 1:
        comparisons = {}
        for g in gauges[1:]:
            comparisons[g] = compare_sweeps(sweeps[gauges[0]], sweeps[g])
            comparisons[g]["power_of_two"] = _pow2_widths(plans[gauges[0]][0], plans[g][0],
                                                          cfg.widths)
        # float32 rounding differences (factors not powers of two) are amplified by training
        # near the edge of stability, so off powers of two the median run is judged
        ok = all(
            (c["bit_identical"][wi] if c["power_of_two"][wi]
             else not c["median_rel_diff"][wi] > cfg.gauge_tolerance)
            for c in comparisons.values() for wi in range(len(cfg.widths)))
        gauge_check.update(
            reference=gauges[0], comparisons=comparisons, identical=ok,
            bit_identical_everywhere=all(all(c["bit_identical"]) for c in comparisons.values()),
            tolerance=cfg.gauge_tolerance,
        )
    main = sweeps["mup" if "mup" in sweeps else gauges[0]].analysis
    verdicts: dict[str, Any] = {
        "transfer": main["transfer"],
        "transfers": main["transfer"] == "stable",
        "wider_not_worse": main["wider_not_worse"],
        "gauges_identical": gauge_check.get("identical", True),
    }
    if control:
        verdicts["control_transfer"] = sweeps["sp"].analysis["transfer"]
        verdicts["control_drifts"] = sweeps["sp"].analysis["transfer"] == "drifts"
    passed = (verdicts["transfers"] and verdicts["wider_not_worse"]
              and verdicts["gauges_identical"] and verdicts.get("control_drifts", True))
    return TransferReport(
        config=asdict(cfg) | {"lrs": lrs, "gauges": list(gauges), "control": control,
                              "richness_axis": list(richness_axis)},
        sweeps=sweeps, gauge_check=gauge_check, verdicts=verdicts, passed=passed,
        seconds=time.perf_counter() - start, data=data.description,
    )


def format_report(report: TransferReport) -> str:
    c = report.config
    lo, hi = math.log2(c["lrs"][0]), math.log2(c["lrs"][-1])
    lines = [
        f"muTransfer check: {c['optimizer']}, r={c['richness']:g}, widths {list(c['widths'])}, "
        f"lr 2^{lo:g} .. 2^{hi:g} ({c['per_octave']}/octave), {c['seeds']} seeds, "
        f"{c['steps']} steps (batch {c['batch_size']}), optimum of {c['metric']}",
        f"data: {report.data}",
        "",
        f"{'sweep':<10} {'log2 lr* per width':<34} {'drift/doubling':>16} {'tol':>6}  "
        f"{'verdict':<12} best {c['metric']} per width",
    ]
    for label, sweep in report.sweeps.items():
        a = sweep.analysis
        opts = " ".join(f"{x:+6.2f}" + ("" if st == "interior" else "*")
                        for x, st in zip(a["optimum_log2_lr"], a["optimum_status"]))
        best = " ".join(f"{v:.3g}" for v in a["best_loss"])
        lines.append(f"{label:<10} {opts:<34} {a['drift']:+8.3f} +-{a['drift_stderr']:.3f} "
                     f"{a['drift_tolerance']:6.3f}  {a['transfer']:<12} {best}")
    lines.append("(* optimum on the grid's edge or next to a diverged run: not interpolated)")
    lines.append("")
    g = report.gauge_check
    if "comparisons" in g:
        for name, comp in g["comparisons"].items():
            cells = []
            for w, p2, same, rel, med in zip(c["widths"], comp["power_of_two"], comp["bit_identical"],
                                             comp["max_rel_diff"], comp["median_rel_diff"]):
                cells.append(f"{w}: " + ("bit-identical" if same else f"median {med:.0e}, max "
                                         f"{rel:.0e}") + (" (pow2)" if p2 else ""))
            lines.append(f"{name} vs {g['reference']}: " + ", ".join(cells))
        lines.append("gauges: " + ("the same sweep in every gauge" if g["identical"] else
                                   "the gauges' sweeps DIFFER") +
                     (" (bit-identical at every width)" if g["bit_identical_everywhere"] else
                      " (bit-identical where every factor is a power of two (pow2); elsewhere "
                      f"float32 rounding, amplified by training at large lrs: median within "
                      f"{g['tolerance']:g})"))
    v = report.verdicts
    main = "mup" if "mup" in report.sweeps else g["gauges"][0]
    a = report.sweeps[main].analysis
    lines.append(f"transfer ({main}): {v['transfer']}: drift {a['drift']:+.3f} +- "
                 f"{a['drift_stderr']:.3f} per doubling (tolerance {a['drift_tolerance']:.3f})")
    lines.append(f"wider not worse at the optimum: {'yes' if v['wider_not_worse'] else 'NO'} "
                 f"(slope of ln best loss vs ln width {a['best_loss_slope']:+.3f} +- "
                 f"{a['best_loss_slope_stderr']:.3f})")
    if "control_transfer" in v:
        sp = report.sweeps["sp"].analysis
        lines.append(f"negative control (SP, one global lr): {v['control_transfer']}: drift "
                     f"{sp['drift']:+.3f} +- {sp['drift_stderr']:.3f} per doubling"
                     + ("" if v["control_drifts"] else "  (expected to drift!)"))
    lines.append(f"\n{'PASS' if report.passed else 'FAIL'} ({report.seconds:.1f} s)")
    return "\n".join(lines)
