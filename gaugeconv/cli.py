"""The ``gaugeconv`` command line: table, verify, demo (and the diagnostics)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import GaugeError

__all__ = ["main", "build_parser"]


def _richness(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"richness must be a number in [0, 0.5], not {value!r}"
        ) from None


def _add_table(sub: Any) -> None:
    p = sub.add_parser(
        "table",
        help="per role and gauge: multiplier, init std, lr/eps/weight-decay factors",
        description="Show, for each role and each gauge (stp, mup, rescaling), the forward "
        "multiplier m, the stored init std sqrt(v)/m and the factors that turn the user's "
        "effective-space lr, eps and weight decay into the stored ones (THEORY.md sections 2-4).",
    )
    p.add_argument("--richness", "-r", type=_richness, required=True, help="r in [0, 0.5]")
    p.add_argument("--width", "-n", type=int, required=True, help="hidden width n")
    p.add_argument("--optimizer", default="sgd", help="sgd or adam (family of the optimizer)")
    p.add_argument("--gamma", type=float, default=1.0, help="prefactor of alpha = gamma n^r")
    p.add_argument("--input-dim", type=int, default=64, help="fan_in d of the readin layer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_table)


def _cmd_table(args: argparse.Namespace) -> int:
    from .table import format_table, gauge_table

    table = gauge_table(args.richness, args.width, args.optimizer, args.gamma, args.input_dim)
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def _add_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="train two gauges side by side and report the largest differences",
        description="Train the reference MLP in gauge FROM and in gauge TO (or convert a copy "
        "of the FROM run to TO at --convert-at) on the same batches, and report per step the "
        "largest relative difference of loss, outputs and effective weights W = m*w.",
    )
    p.add_argument("--richness", "-r", type=_richness, default=None,
                   help="r in [0, 0.5] (default 0.5, or the r of a named point)")
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--from", dest="from_gauge", default="stp",
                   help="gauge or named point of run A: stp, mup, rescaling, ntp, ntp-lr, mup-lr, mfp")
    p.add_argument("--to", dest="to_gauge", default="mup", help="gauge or named point of run B")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--convert-at", type=int, default=None, metavar="STEP",
                   help="train B in FROM, convert model+optimizer+scheduler to TO before STEP")
    p.add_argument("--lr", type=float, default=None, help="base (effective-space) learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=1e-8, help="Adam eps (effective space)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data", choices=["digits", "synthetic"], default="digits")
    p.add_argument("--activation", choices=["relu", "tanh", "gelu", "linear"], default="tanh",
                   help="tanh by default: a ReLU kink within rounding of a pre-activation "
                   "can split float32 runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed relative difference (default 1e-10 float64, 1e-4 float32)")
    p.add_argument("--negative-control", choices=["eps", "lr"], default=None,
                   help="break that transformation rule on run B: the check must then fail")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_verify)


def _verify_config(args: argparse.Namespace):
    from .verify import VerifyConfig

    keys = VerifyConfig.__dataclass_fields__
    return VerifyConfig(**{k: v for k, v in vars(args).items() if k in keys})


def format_report(report: Any, every: int = 10) -> str:
    c = report.config
    lines = [
        f"data: {report.data}",
        f"A: {c['from_gauge']}   B: {c['to_gauge']}"
        + (f" (converted from {c['from_gauge']} before step {c['convert_at']})"
           if c["convert_at"] is not None else " (built directly)"),
        f"r={c['richness']:g} gamma={c['gamma']:g} width={c['width']} depth={c['depth']} "
        f"optimizer={c['optimizer']} lr={c['lr']:g} dtype={c['dtype']} steps={report.steps}",
        "",
        f"{'step':>5}  {'loss A':>12}  {'loss B':>12}  {'rel loss':>9}  {'rel out':>9}  {'rel W':>9}",
    ]
    for row in report.per_step:
        if row["step"] % every == 0 or row["step"] == report.steps - 1:
            lines.append(
                f"{row['step']:>5}  {row['loss_a']:>12.8f}  {row['loss_b']:>12.8f}  "
                f"{row['loss']:>9.2e}  {row['output']:>9.2e}  {row['weights']:>9.2e}"
            )
    d = report.max_rel_diff
    verdict = "EQUIVALENT" if report.equivalent else "NOT EQUIVALENT"
    lines += [
        "",
        f"max relative difference: loss {d['loss']:.3e}  output {d['output']:.3e}  "
        f"weights {d['weights']:.3e}  (tolerance {report.tolerance:g})",
        f"verdict: {verdict}" + ("  (bit-identical)" if report.bit_identical else ""),
    ]
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    report = verify(_verify_config(args), progress=not args.json)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(format_report(report))
    return 0 if report.equivalent else 1


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the quick tour: table, conversions mid-training, verification (no downloads)",
        description="Build the reference MLP on scikit-learn's digits, show the gauge table, "
        "train in STP gauge while a second run is converted to muP gauge and then to the "
        "rescaling gauge mid-training, and print the verification (SGD and AdamW, float64); "
        "finally show that the check fails when Adam's eps rule is left out.",
    )
    p.add_argument("--richness", "-r", type=_richness, default=0.5)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.richness, args.width, args.steps, as_json=args.json)


def _add_roles(sub: Any) -> None:
    p = sub.add_parser(
        "roles",
        help="inferred role, fan_in, multiplier and lr factor of every tensor of a saved HF model",
        description="Read MODEL_DIR's config.json, build the model on the meta device (no "
        "weights are loaded), infer each tensor's role by comparing shapes at twice the width, "
        "and print role, fan_in, multiplier and learning-rate factor per tensor. A folder with a "
        "gauge entry uses it; a plain folder needs --richness.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--richness", "-r", type=_richness, default=None)
    p.add_argument("--gauge", default="mup", help="stp, mup, rescaling or a named point")
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--optimizer", default="adam", help="adam or sgd (optimizer family)")
    p.add_argument("--tied-role", choices=["readin", "readout"], default="readout")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_roles)


def _cmd_roles(args: argparse.Namespace) -> int:
    from .hf.config import GaugeConfig
    from .hf.inspect import roles_of_folder

    config = None
    if args.richness is not None or args.gauge not in ("stp", "mup", "rescaling"):
        config = GaugeConfig(richness=args.richness, gauge=args.gauge, gamma=args.gamma,
                             optimizer=args.optimizer, tied_role=args.tied_role)
    report = roles_of_folder(args.model_dir, config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    g = report["gauge"]
    print(f"{report['model']}: r={g['richness']:g} gamma={g['gamma']:g} gauge={g['gauge']} "
          f"optimizer family={g['optimizer']} width={g['width']}\n")
    head = ["tensor", "shape", "module", "role", "fan_in", "from", "multiplier", "lr x", "init std"]
    rows = [head]
    for t in report["tensors"]:
        rows.append([
            t["name"] + (" (+tied)" if len(t["uses"]) > 1 else ""), "x".join(map(str, t["shape"])),
            t["module"], t["role"], str(t["fan_in"]), t["source"], f"{t['multiplier']:.4g}",
            f"{t['lr_factor']:.4g}", "keep" if t["init_std"] is None else f"{t['init_std']:.4g}",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a saved model or Trainer checkpoint folder to another gauge (streaming)",
        description="Convert SRC (a save_pretrained folder, single or sharded safetensors, or a "
        "Trainer checkpoint-N folder with optimizer.pt and scheduler.pt) to gauge --to, writing "
        "DST. The source gauge comes from config.json; a plain folder is STP gauge and needs "
        "--richness. Tensors are streamed one at a time; SRC is never modified; DST appears "
        "only when complete and verified.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--to", required=True, help="stp, mup, rescaling or a named point")
    p.add_argument("--richness", "-r", type=_richness, default=None,
                   help="r of a plain (gauge-less) SRC; must match a gauged SRC's r")
    p.add_argument("--gamma", type=float, default=1.0, help="gamma of a plain SRC")
    p.add_argument("--optimizer", default="adam", help="optimizer family of a plain SRC: adam|sgd")
    p.add_argument("--tied-role", choices=["readin", "readout"], default="readout",
                   help="learning-rate role of tied tensors for a plain SRC")
    p.add_argument("--exact", action="store_true",
                   help="refuse a conversion with scale factors that are not powers of two")
    p.add_argument("--snap-pow2", action="store_true",
                   help="use the nearest gauge whose factors are powers of two (lossless)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    import signal

    from .checkpoint import convert_checkpoint

    def interrupted(signum, frame):  # let the temporary folder be removed on SIGTERM
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        report = convert_checkpoint(
            args.src, args.dst, args.to, richness=args.richness, gamma=args.gamma,
            optimizer=args.optimizer, tied_role=args.tied_role, exact=args.exact,
            snap_pow2=args.snap_pow2, overwrite=args.overwrite, progress=not args.json,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(f"{report.src} -> {report.dst}  ({report.model})")
    print(f"gauge {report.from_gauge['gauge']} -> {report.to_gauge['gauge']} at "
          f"r={report.to_gauge['richness']:g}, {report.shards} shard(s), {report.tensors} tensors "
          f"({report.scaled} rescaled, {report.copied_raw} copied as raw bytes), "
          f"{report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s")
    print(f"optimizer.pt: {'converted' if report.optimizer else 'none'}   scheduler.pt: "
          f"{'converted' if report.scheduler else 'none'}")
    if report.lossless:
        print("lossless: every scale factor is a power of two")
    else:
        print(f"largest round-trip error: {report.max_roundtrip_rel_error:.2e} (relative); "
              f"{len(report.not_power_of_two)} tensor(s) with factors that are not powers of two "
              "(--exact refuses, --snap-pow2 avoids)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaugeconv",
        description="Richness-r parameterizations of wide networks and exact conversion between "
        "their gauges (STP, muP, rescaling).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gaugeconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_table, _add_verify, _add_demo, _add_roles, _add_convert):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except GaugeError as err:
        print(f"gaugeconv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
