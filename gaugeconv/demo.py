"""``gaugeconv demo``: the quick tour, on scikit-learn's bundled digits (no downloads)."""

from __future__ import annotations

import json
import time

from .table import format_table, gauge_table
from .verify import VerifyConfig, verify

__all__ = ["run_demo"]


def _line(name: str, report) -> str:
    d = report.max_rel_diff
    verdict = "equivalent" if report.equivalent else "NOT equivalent"
    bits = ", bit-identical" if report.bit_identical else ""
    return (
        f"  {name:<44} loss {d['loss']:.1e}  output {d['output']:.1e}  weights {d['weights']:.1e}"
        f"  -> {verdict}{bits}  (final loss {report.final_loss['a']:.4f})"
    )


def run_demo(richness: float = 0.5, width: int = 256, steps: int = 30, as_json: bool = False) -> int:
    """Table, conversions in mid-training for SGD and AdamW, and a negative control."""
    start = time.perf_counter()
    table = gauge_table(richness, width, "sgd")
    third = max(1, steps // 3)
    runs = {}
    for opt in ("sgd", "adamw"):
        for dtype in ("float64", "float32"):
            cfg = VerifyConfig(
                richness=richness, from_gauge="stp", to_gauge="mup", optimizer=opt, steps=steps,
                width=width, dtype=dtype, convert_at=third, then=((2 * third, "rescaling"),),
            )
            runs[f"{opt} {dtype}: stp -> mup @{third} -> rescaling @{2 * third}"] = verify(cfg)
        odd = width * 3 // 2  # not a power of two: agreement to rounding, not bit for bit
        cfg = VerifyConfig(richness=richness, from_gauge="stp", to_gauge="rescaling",
                           optimizer=opt, steps=steps, width=odd)
        runs[f"{opt} float64: stp vs rescaling, width {odd}"] = verify(cfg)
    control_cfg = VerifyConfig(richness=richness, from_gauge="stp", to_gauge="mup",
                               optimizer="adamw", steps=steps, width=width, eps=1e-12,
                               negative_control="eps")
    control = verify(control_cfg)
    ok = all(r.equivalent for r in runs.values()) and not control.equivalent
    elapsed = time.perf_counter() - start
    if as_json:
        out = {
            "table": table,
            "data": control.data,
            "runs": {k: {"equivalent": r.equivalent, "bit_identical": r.bit_identical,
                         "max_rel_diff": r.max_rel_diff, "final_loss": r.final_loss["a"]}
                     for k, r in runs.items()},
            "negative_control": {"equivalent": control.equivalent,
                                 "max_rel_diff": control.max_rel_diff},
            "ok": ok,
            "seconds": elapsed,
        }
        print(json.dumps(out, indent=2))
        return 0 if ok else 1
    print("gaugeconv demo: one richness, three gauges, one trajectory\n")
    print(format_table(table))
    print(f"\ndata: {control.data}")
    print(f"reference MLP: depth 3, width {width}, {steps} steps, warm-up/decay LambdaLR schedule;")
    print("run A trains in STP gauge throughout, run B is converted in mid-training.\n")
    for name, report in runs.items():
        print(_line(name, report))
    print("\nnegative control: AdamW with the eps rule left out (eps = 1e-12):")
    print(_line("stp vs mup, eps not moved with the gauge", control))
    print(f"\n{'all checks behave as the theory says' if ok else 'SOMETHING IS WRONG'}"
          f"  ({elapsed:.1f} s)")
    return 0 if ok else 1
