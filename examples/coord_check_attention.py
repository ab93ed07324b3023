"""Coordinate checks of small Llama and GPT-2 models with the attention logit scale of richness r.

2 layers, 4 heads (head dimension n/4), muP gauge, token progressions (vocabulary 64), Adam
(lr 0.02) and SGD (lr 0.5), r in {0, 1/4, 1/2}; plus the negative control that keeps every
width's own 1/sqrt(d) at r = 1/2. Verdicts use the slope over the widest `--window` widths,
within `--tolerance` of THEORY.md section 7 and the attention expectations of
gaugeconv/diagnostics/coord_check.py. Writes one JSON line per check and one PNG per richness:

    python examples/coord_check_attention.py --widths 64 128 256 512 1024 --seeds 2 \
        --out docs/coord_check_attention
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gaugeconv.data import token_data
from gaugeconv.diagnostics import CoordCheckConfig, coord_check
from gaugeconv.diagnostics.coord_check import QK_NAMES
from gaugeconv.diagnostics.transformer import transformer_factory

QUANTITIES = ("feature_change", "own_update_share", "loss_share")
TITLES = {"feature_change": "RMS(dh)/RMS(h)", "own_update_share": "own-update share (D3)",
          "loss_share": "first-step loss share (D2)"}
LR = {"adam": 0.02, "sgd": 0.5}


def group(layer: str) -> str | None:
    """Plot group of a layer: attention q/k, other attention, MLP (None: embedding, head)."""
    last = layer.rpartition(".")[2]
    if last in QK_NAMES or layer[-3:] in QK_NAMES:  # q_proj, k_proj, c_attn[q], c_attn[k]
        return "q, k"
    if ".attn." in layer or ".self_attn." in layer:
        return "attention v, o, qkv"
    if ".mlp." in layer:
        return "MLP"
    return None


def run(arch: str, r: float, opt: str, attention: str, args) -> dict:
    cfg = CoordCheckConfig(richness=r, optimizer=opt, widths=tuple(args.widths), seeds=args.seeds,
                           lr=LR[opt], batch_size=args.batch_size, tolerance=args.tolerance,
                           window=args.window, probe=args.probe)
    rep = coord_check(cfg, transformer_factory(arch, r, opt, attention=attention),
                      token_data(64), progress=True)
    checked = {}
    for layer in rep.layers:
        if group(layer) is None:
            continue
        for q, st in rep.results[layer].items():
            if st["expected"] is not None and q in QUANTITIES + ("rms_h_init", "rms_h_final"):
                checked[f"{layer}:{q}"] = (st["window_slope"], st["expected"], st["pass"])
    worst = max(checked.items(), key=lambda kv: abs(kv[1][0] - kv[1][1]))
    df = rep.results["lm_head"]["output_change"]
    out = {
        "arch": arch, "richness": r, "optimizer": opt, "attention": attention,
        "probe": args.probe, "batch_size": args.batch_size,
        "widths": list(args.widths), "seeds": args.seeds, "window": args.window,
        "all_attention_mlp_pass": all(v[2] for v in checked.values()),
        "worst": {"what": worst[0], "window_slope": worst[1][0], "expected": worst[1][1]},
        "failures": [k for k, v in checked.items() if not v[2]],
        "rms_df": {"slope": df["slope"], "window_slope": df["window_slope"],
                   "values": df["values"]},
        "seconds": rep.seconds,
        "series": {layer: {q: rep.results[layer][q]["values"] for q in QUANTITIES}
                   for layer in rep.layers if group(layer)},
        "slopes": {layer: {q: [rep.results[layer][q]["window_slope"],
                               rep.results[layer][q]["expected"]] for q in QUANTITIES}
                   for layer in rep.layers if group(layer)},
    }
    print(f"{arch:5} r={r:<4g} {opt:4} {attention:8} pass={out['all_attention_mlp_pass']} "
          f"worst {worst[0]} {worst[1][0]:+.3f} vs {worst[1][1]:+.2f}; "
          f"RMS(df) slope {df['slope']:+.3f} (window {df['window_slope']:+.3f}) "
          f"[{rep.seconds:.0f} s]", flush=True)
    return out


def plot(results: list[dict], r: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [x for x in results if x["richness"] == r]
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 2.7 * len(rows)), squeeze=False)
    colors = {"q, k": "C0", "attention v, o, qkv": "C1", "MLP": "C2"}
    for i, res in enumerate(rows):
        widths = res["widths"]
        for j, q in enumerate(QUANTITIES):
            ax = axes[i][j]
            for layer, series in res["series"].items():
                g = group(layer)
                values = series[q]
                base = values[0]
                ax.plot(widths, [v / base for v in values], color=colors[g], lw=1, marker=".",
                        ms=3, alpha=0.8)
                slope, expected = res["slopes"][layer][q]
                if expected is not None:
                    w0 = widths[-res["window"]]
                    v0 = values[-res["window"]] / base
                    ax.plot([w0, widths[-1]], [v0, v0 * (widths[-1] / w0) ** expected],
                            color="k", ls="--", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(2.0**-6, 2.0**3)
            devs = [abs(s[q][0] - s[q][1]) for s in res["slopes"].values() if s[q][1] is not None]
            fail = any(k.endswith(":" + q) for k in res["failures"])
            ax.set_title(f"{TITLES[q]}: max |slope - theory| {max(devs):.2f}"
                         + (" FAIL" if fail else ""), fontsize=8,
                         color="C3" if fail else "black")
            if j == 0:
                label = f"{res['arch']} {res['optimizer']} ({widths[0]}-{widths[-1]})"
                if res["attention"] != "richness":
                    label += "\n1/sqrt(d) control"
                ax.set_ylabel(label + "\n(value / value at n=64)", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel("width n (head dim n/4)", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], color=c, label=g) for g, c in colors.items()]
    handles.append(plt.Line2D([], [], color="k", ls="--", label="theory, widest window"))
    fig.legend(handles=handles, loc="lower center", fontsize=8, ncol=4)
    fig.suptitle(f"attention at richness r = {r:g}: logit scale (1/sqrt(d0)) * d0/d "
                 f"(d0 = 16); 2-layer transformers, {rows[0]['seeds']} seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _png(prefix: str, r: float) -> Path:
    return Path(f"{prefix}_r{f'{r:g}'.replace('.', '')}.png")  # r0, r025, r05


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--archs", nargs="+", default=["llama", "gpt2"])
    p.add_argument("--optimizers", nargs="+", default=["adam", "sgd"])
    p.add_argument("--richness", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument("--controls", type=float, nargs="*", default=[0.5],
                   help="richness values (among --richness) of the 1/sqrt(d) negative control")
    p.add_argument("--no-control", action="store_true", help="skip the 1/sqrt(d) control")
    p.add_argument("--controls-only", action="store_true", help="run only the controls")
    p.add_argument("--batch-size", type=int, default=16, help="training sequences per step")
    p.add_argument("--probe", choices=["held-out", "train"], default="held-out",
                   help="measure on held-out sequences (default) or on the training batch")
    p.add_argument("--out", default="coord_check_attention", help="prefix of .jsonl and .png")
    p.add_argument("--plot-only", action="store_true", help="plot OUT.jsonl's records (the "
                   "last record of each check wins), run nothing")
    args = p.parse_args()
    if args.plot_only:
        latest = {}
        for line in Path(f"{args.out}.jsonl").read_text().splitlines():
            res = json.loads(line)
            latest[(res["arch"], res["richness"], res["optimizer"], res["attention"])] = res
        for r in sorted({k[1] for k in latest}):
            plot(list(latest.values()), r, _png(args.out, r))
        return
    results = []
    jobs = [] if args.controls_only else [(a, r, o, "richness") for r in args.richness
                                          for a in args.archs for o in args.optimizers]
    if not args.no_control:
        jobs += [(a, r, o, "sqrt") for r in args.controls if r in args.richness
                 for a in args.archs for o in args.optimizers]
    with open(f"{args.out}.jsonl", "a") as f:
        for job in jobs:
            res = run(*job, args)
            results.append(res)
            f.write(json.dumps(res) + "\n")
            f.flush()
    for r in args.richness:
        plot(results, r, _png(args.out, r))
    assert not any(math.isnan(x["worst"]["window_slope"]) for x in results)


if __name__ == "__main__":
    main()
