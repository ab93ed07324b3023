"""The per-step differences of a report on a log axis, as a PNG (matplotlib's Figure, Agg)."""

from __future__ import annotations

from pathlib import Path

from .report import QUANTITIES, EquivalenceReport

__all__ = ["plot_report"]

_STYLE = {"loss": ("tab:blue", "o"), "logits": ("tab:orange", "s"), "weights": ("tab:green", "^")}


def plot_report(report: EquivalenceReport, path: str | Path) -> str:
    """Write the plot; zeros (bit-identical steps) sit on a marked floor below the tolerance."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    steps = [r["step"] for r in report.per_step]
    values = [r[k] for r in report.per_step for k in QUANTITIES if r[k] > 0]
    floor = min([report.tolerance * 1e-6] + [v / 10 for v in values])
    fig = Figure(figsize=(9.0, 4.4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for key in QUANTITIES:
        color, marker = _STYLE[key]
        ys = [max(r[key], floor) for r in report.per_step]
        ax.plot(steps, ys, color=color, marker=marker, markersize=4, linewidth=1.4,
                label=f"{key} (max {report.max_rel_diff[key]:.1e})")
    ax.axhline(report.tolerance, color="tab:red", linestyle="--", linewidth=1.2,
               label=f"tolerance {report.tolerance:.1e} ({report.dtype})")
    ax.axhline(floor, color="0.6", linestyle=":", linewidth=1.0, label="0 (bit-identical)")
    ax.set_yscale("log")
    ax.set_xlabel("step (loss and logits: the forward of the step; weights: after its update)",
                  fontsize=8)
    ax.set_ylabel("relative difference, A vs B")
    control = report.negative_control
    title = f"{report.verdict}" + (f" — negative control: {control['what']}" if control else "")
    ax.set_title(title, fontsize=9, wrap=True)
    fig.text(0.01, 0.01, f"A: {report.a}\nB: {report.b}", fontsize=7, va="bottom", color="0.3")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.subplots_adjust(bottom=0.24, top=0.9, left=0.09, right=0.70)
    fig.savefig(path)
    return str(path)
