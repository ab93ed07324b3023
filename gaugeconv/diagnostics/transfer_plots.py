"""Plots of learning-rate sweeps: loss against lr per width, and best loss against width."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .transfer import Sweep, TransferReport

__all__ = ["plot_lr_sweeps", "plot_transfer", "plot_richness_axis", "SWEEP_TITLES"]

SWEEP_TITLES = {"stp": "STP gauge", "mup": "muP gauge", "rescaling": "rescaling gauge",
                "sp": "SP, one global lr (control)"}
_METRIC_NAMES = {"train_loss": "training loss", "test_loss": "held-out loss"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(ax) -> None:
    """Log-scale y ticks at 1, 2, 5 x 10^k written as plain numbers (0.05, 0.1, 0.2)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _optimizer_name(name: str) -> str:
    return {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}.get(name, name)


def _title(label: str, r: float | None) -> str:
    if label in SWEEP_TITLES and label != "sp" and r is not None:
        return f"{SWEEP_TITLES[label]}, r = {r:g}"
    return SWEEP_TITLES.get(label, label)


def plot_lr_sweeps(rows: Sequence[tuple[str, Mapping[str, Sweep]]], path: str | Path,
                   title: str, richness: float | None = None) -> Path:
    """One row per (name, sweeps), one panel per sweep: the seed-mean loss against the base lr,
    one curve per width (dark = narrow, light = wide), each width's interpolated optimum marked;
    the panel title gives the fitted drift of log2(lr*) per doubling of width and the verdict."""
    plt = _pyplot()
    cols = max(len(s) for _, s in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.6 * cols, 3.1 * len(rows)),
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, (row_name, sweeps) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(sweeps):
                ax.axis("off")
                continue
            label, sweep = list(sweeps.items())[j]
            a = sweep.analysis
            finite = [v for c in a["mean_curves"] for v in c if math.isfinite(v)]
            start = [c[0] for c in a["mean_curves"] if math.isfinite(c[0])]
            for wi, width in enumerate(sweep.widths):
                color = cmap(0.85 * wi / max(1, len(sweep.widths) - 1))
                ax.plot(sweep.lrs, a["mean_curves"][wi], color=color, marker=".", ms=3, lw=1.2,
                        label=f"n={width}")
                if math.isfinite(a["optimum_log2_lr"][wi]):
                    ax.plot([2.0 ** a["optimum_log2_lr"][wi]], [a["optimum_loss"][wi]],
                            marker="*", ms=11, color=color, mec="black", mew=0.6, zorder=5)
            ax.set_xscale("log", base=2)
            ax.set_xlim(sweep.lrs[0] / 1.25, sweep.lrs[-1] * 1.25)
            ax.set_yscale("log")
            if finite:
                top = max(start) * 1.3 if start else max(finite)
                ax.set_ylim(min(finite) * 0.8, min(max(finite), top) * 1.05)
            _plain_log_ticks(ax)
            verdict = a["transfer"]
            color = {"stable": "C2", "drifts": "C3"}.get(verdict, "C1")
            ax.set_title(f"{_title(label, richness)}\ndrift {a['drift']:+.2f} \u00b1 "
                         f"{a['drift_stderr']:.2f} per doubling: {verdict}", fontsize=9,
                         color=color)
            if j == 0:
                ax.set_ylabel(f"{row_name}\n{_METRIC_NAMES.get(a['metric'], a['metric'])}",
                              fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("base learning rate \u03b7", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower left", title="width (\u2605 optimum)",
                          title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_transfer(reports: Sequence[TransferReport], path: str | Path) -> Path:
    """The gauges' sweeps and the SP control, one row per optimizer."""
    rows = []
    for rep in reports:
        keep = {k: s for k, s in rep.sweeps.items() if not k.startswith("r=")}
        rows.append((_optimizer_name(rep.config["optimizer"]), keep))
    c = reports[0].config
    gauges = reports[0].gauge_check
    same = ("identical curves in every gauge" if gauges.get("identical")
            else "gauges differ" if "identical" in gauges else "")
    title = (f"muTransfer: reference MLP on digits, {c['steps']} steps, {c['seeds']} seeds; "
             f"{same}")
    return plot_lr_sweeps(rows, path, title, richness=c["richness"])


def plot_richness_axis(reports: Sequence[TransferReport], path: str | Path) -> Path:
    """Best loss against width at every richness swept (and SP), one panel per optimizer:
    solid the best training loss (mean over seeds, bars: seed spread), dashed the held-out loss
    at that optimum."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(4.6 * len(reports) + 2.4, 4.0),
                             squeeze=False)
    for ax, rep in zip(axes[0], reports):
        r_main = rep.config["richness"]
        main = "mup" if "mup" in rep.sweeps else rep.config["gauges"][0]
        curves = {float(k[2:]): s for k, s in rep.sweeps.items() if k.startswith("r=")}
        curves[r_main] = rep.sweeps[main]
        styles = []
        for k, r in enumerate(sorted(curves)):
            styles.append((f"r = {r:g}", curves[r], f"C{k}"))
        if "sp" in rep.sweeps:
            styles.append(("SP (control)", rep.sweeps["sp"], "0.5"))
        for name, sweep, color in styles:
            a = sweep.analysis
            seeds = a["per_seed_best_loss"]
            lo = [min(col) for col in zip(*seeds)]
            hi = [max(col) for col in zip(*seeds)]
            mean = a["best_loss"]
            err = [[m - x for m, x in zip(mean, lo)], [x - m for m, x in zip(mean, hi)]]
            ax.errorbar(sweep.widths, mean, yerr=err, color=color, marker="o", ms=4, lw=1.4,
                        capsize=2, label=f"{name}: train")
            ax.plot(sweep.widths, a["test_loss_at_optimum"], color=color, ls="--", lw=1,
                    marker=".", label=f"{name}: held-out")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        widths = rep.config["widths"]
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("width n", fontsize=9)
        ax.set_ylabel("loss at the best lr", fontsize=9)
        _plain_log_ticks(ax)
        ax.set_title(f"{_optimizer_name(rep.config['optimizer'])}: best loss vs width",
                     fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: ("held-out" in labels[k], k))
    fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="center right",
               fontsize=7.5, frameon=False)
    c = reports[0].config
    fig.suptitle(f"richness axis, lazy (r = 0) to rich (r = 1/2): reference MLP on digits, "
                 f"{c['steps']} steps, {c['seeds']} seeds\nsolid: best training loss (bars: "
                 "range over seeds); dashed: held-out loss at that lr", fontsize=9)
    width = fig.get_figwidth()
    fig.subplots_adjust(left=0.8 / width, right=1 - 2.2 / width, top=0.8, bottom=0.13,
                        wspace=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
