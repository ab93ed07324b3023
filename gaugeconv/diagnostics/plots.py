"""Plots of the coordinate check: every quantity against width on log axes, per layer, with the
fitted slope and the theoretical one drawn side by side."""

from __future__ import annotations

from pathlib import Path

from .coord_check import DESIDERATA, CoordCheckReport

__all__ = ["plot_coord_check"]

TITLES = {
    "rms_h_init": "RMS(h) at init (D0)", "rms_h_final": "RMS(h) after (D0)",
    "feature_change": "RMS(dh)/RMS(h) (richness)", "own_update_share": "own update share (D3)",
    "loss_share": "loss-decrease share (D2)", "output_change": "RMS(df) per step (D1)",
}


def plot_coord_check(report: CoordCheckReport, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = list(report.config["widths"])
    quantities = list(DESIDERATA)
    rows, cols = len(report.layers), len(quantities)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.6 * rows), squeeze=False)
    for i, layer in enumerate(report.layers):
        for j, q in enumerate(quantities):
            ax = axes[i][j]
            st = report.results[layer][q]
            if q == "output_change" and report.roles[layer] != "readout":
                ax.axis("off")  # the network output belongs to the readout row
                ax.text(0.5, 0.5, "see readout row", ha="center", va="center", fontsize=8,
                        color="0.5", transform=ax.transAxes)
                if i == 0:
                    ax.annotate(TITLES[q], (0.5, 1.25), xycoords="axes fraction", ha="center",
                                fontsize=9, fontweight="bold")
                continue
            for series in report.raw[layer][q]:
                ax.plot(widths, series, color="0.8", lw=0.8, marker=".", ms=3)
            ax.plot(widths, st["values"], color="C0", marker="o", ms=4, label="measured")
            x0, y0 = widths[0], st["values"][0]
            fit = [y0 * (w / x0) ** st["slope"] for w in widths]
            ax.plot(widths, fit, color="C0", ls=":", lw=1)
            if st["expected"] is not None:
                theory = [y0 * (w / x0) ** st["expected"] for w in widths]
                color = "C2" if st["pass"] else "C3"
                ax.plot(widths, theory, color=color, ls="--", lw=1.2, label="theory")
            ax.set_xscale("log", base=2)
            values = [v for series in report.raw[layer][q] for v in series] + st["values"]
            if all(v > 0 for v in values):
                ax.set_yscale("log")
                lo, hi = min(values), max(values)
                mid = (lo * hi) ** 0.5
                span = max(hi / lo, 10.0) ** 0.5 * 1.1  # at least a decade: flat looks flat
                ax.set_ylim(mid / span, mid * span)
            verdict = "" if st["pass"] is None else (" ok" if st["pass"] else " FAIL")
            exp = "" if st["expected"] is None else f" vs {st['expected']:+.2f}"
            ax.set_title(f"slope {st['slope']:+.2f}{exp}{verdict}", fontsize=8,
                         color="C3" if st["pass"] is False else "black")
            if i == 0:
                ax.annotate(TITLES[q], (0.5, 1.25), xycoords="axes fraction", ha="center",
                            fontsize=9, fontweight="bold")
            if j == 0:
                ax.set_ylabel(f"{layer}\n({report.roles[layer]})", fontsize=9)
            if i == rows - 1:
                ax.set_xlabel("width n", fontsize=8)
            ax.tick_params(labelsize=7)
    c = report.config
    fig.suptitle(
        f"coordinate check: r={c['richness']:g}, {c['gauge']} gauge, {c['optimizer']}, "
        f"lr={c['lr']:g}, {c['seeds']} seeds, {c['steps']} steps   (blue: measured and fit, "
        "green/red dashed: theory)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
