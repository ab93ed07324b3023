"""The ``gaugeconv`` command line: table, verify, demo (and the diagnostics)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from .errors import GaugeError

__all__ = ["main", "run", "build_parser"]


def _richness(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"richness must be a number in [0, 0.5], not {value!r}"
        ) from None


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise GaugeError(f"{name} must be >= {low}, not {value}")


def _positive_number(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise GaugeError(f"{name} must be a finite positive number, not {value}")


def _check_widths(widths: Sequence[int]) -> None:
    """At least two distinct widths, each >= 2: a slope against width needs them."""
    if len(set(widths)) < 2:
        raise GaugeError(f"--widths needs at least two distinct widths, not {list(widths)}")
    if len(set(widths)) != len(widths):
        raise GaugeError(f"--widths lists a width twice: {list(widths)}")


def _check_plot_path(option: str, path: str | None) -> None:
    """A plot's file must be writable where asked, checked before any training starts."""
    if path is None:
        return
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise GaugeError(f"{option} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise GaugeError(f"{option} {path} is a folder; give a file name such as plot.png")
    if not os.access(folder, os.W_OK):
        raise GaugeError(f"{option} {path}: the folder {folder} is not writable")
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext:
        from matplotlib.backend_bases import FigureCanvasBase

        known = FigureCanvasBase.get_supported_filetypes()
        if ext not in known:
            raise GaugeError(f"{option} {path}: matplotlib cannot write .{ext} files; use one of "
                             + ", ".join(sorted(known)))


def _write_plot(option: str, path: str, plot: Any, *data: Any) -> None:
    try:
        plot(*data, path)
    except OSError as err:  # the folder vanished or the disk is full: the system's reason
        raise GaugeError(f"{option} {path}: cannot write it ({err.strerror or err})") from None


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
    from .verify_cli import DESCRIPTION, add_verify_arguments

    p = sub.add_parser(
        "verify",
        help="prove two gauges train the same model: saved folders, or the reference MLP",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verify_arguments(p, _richness)
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


def _check_verify_args(args: argparse.Namespace) -> None:
    for name in ("steps", "width", "depth", "batch_size"):
        _at_least("--" + name.replace("_", "-"), getattr(args, name), 1)
    if args.convert_at is not None and not 0 <= args.convert_at < args.steps:
        raise GaugeError(f"--convert-at {args.convert_at} is outside the run: give a step in "
                         f"[0, {args.steps - 1}] (--steps {args.steps})")
    for name in ("lr", "tolerance", "eps"):
        _positive_number("--" + name, getattr(args, name))
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise GaugeError(f"--weight-decay must be a finite number >= 0, not {args.weight_decay}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify
    from .verify_cli import mlp_defaults, run_folders

    if args.folders:
        return run_folders(args)
    mlp_defaults(args)
    _check_verify_args(args)
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
    p.add_argument("--width", type=int, default=None,
                   help="reference width n, for configs without a hidden size (CLIP, ConvNeXt)")
    p.add_argument("--width-field", action="append", default=[], metavar="FIELD=scale|fixed",
                   help="whether a config field grows with width (repeatable), for fields that "
                   "role inference cannot decide")
    p.add_argument("--allow-unusual-roles", action="store_true",
                   help="show a model whose roles have no readout, no hidden tensor or only "
                   "fixed tensors instead of refusing it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_roles)


def _cmd_roles(args: argparse.Namespace) -> int:
    from .hf.config import GaugeConfig
    from .hf.inspect import roles_of_folder

    width_fields = {}
    for item in args.width_field:
        name, sep, choice = item.partition("=")
        if not sep:
            raise GaugeError(f"--width-field {item!r}: expected FIELD=scale or FIELD=fixed")
        width_fields[name] = choice
    config = None
    if args.richness is not None or args.gauge not in ("stp", "mup", "rescaling"):
        config = GaugeConfig(richness=args.richness, gauge=args.gauge, gamma=args.gamma,
                             optimizer=args.optimizer, tied_role=args.tied_role,
                             width=args.width, width_fields=width_fields,
                             allow_unusual_roles=args.allow_unusual_roles)
    report = roles_of_folder(args.model_dir, config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    g = report["gauge"]
    print(f"{report['model']}: r={g['richness']:g} gamma={g['gamma']:g} gauge={g['gauge']} "
          f"({g['form']} form) optimizer family={g['optimizer']} width={g['width']}")
    print("multiplier, lr x, init std: the gauge's stored numbers (its materialized form); in the "
          "plain form the Parameters hold effective tensors and the optimizer groups are STP's"
          if g["form"] == "plain" else "multiplier, lr x, init std: the gauge's stored numbers")
    print(_attention_line(report["attention"]) + "\n")
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
    print("\nroles: " + ", ".join(f"{n} {role}" for role, n in report["summary"].items()))
    grown = ", ".join(f"{f['path']} {f['old']}->{f['new']} ({f['reason']})"
                      for f in report["scaled_fields"])
    print(f"grows with width in the double-width twin: {grown}")
    for problem in report["verdict"]:
        print(f"UNUSUAL (confirmed by allow_unusual_roles): {problem}")
    for flag in report["flags"]:
        print(f"flag: {flag}")
    if not report["verdict"] and not report["flags"]:
        print("nothing unusual")
    return 0


def _attention_line(att: dict[str, Any]) -> str:
    """One line on the attention logit scale (hf/attention.py) for `gaugeconv roles`."""
    mods, blocked = att["modules"], att["unsupported"]
    line = (f"attention logit scale ~ d^-{att['logit_exponent']:g}, base head dim "
            f"d0={att['base_head_dim']}: ")
    scales = sorted({(m["module"], m["head_dim"], m["native"], m["scaling"]) for m in mods})
    line += "; ".join(f"{name} d={d} scaling {s:.4g} (own {own:.4g})"
                      for name, d, own, s in scales) or "no attention modules"
    if blocked:
        line += f"; no `scaling` to set (kept only at d = d0): {', '.join(blocked[:3])}"
    return line


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a saved model or Trainer checkpoint folder to another gauge (streaming)",
        description="Convert SRC (a save_pretrained folder: single or sharded safetensors or "
        "pytorch_model.bin, a Hugging Face cache snapshot, or a Trainer checkpoint-N folder with "
        "optimizer.pt and scheduler.pt) to gauge --to, writing DST (safetensors). The source "
        "gauge comes from config.json, read as data (no code from SRC runs); a plain folder is "
        "STP gauge and needs --richness. Every check runs before anything is written; tensors "
        "are streamed in chunks by a pool of threads; SRC is never modified; DST appears only "
        "when complete and verified, and an existing DST is replaced only with --overwrite. "
        "DST holds effective tensors (config.json format_version 2): a plain checkpoint of the "
        "same function, which AutoModel*.from_pretrained and vLLM load as it is and "
        "gaugeconv.hf.from_pretrained puts back in gauge --to; a plain or format-2 SRC's weights "
        "are copied unchanged, a format-1 SRC's are scaled to effective tensors. optimizer.pt "
        "and scheduler.pt are converted to the units DST's form trains in: --form plain (the "
        "default: the model stays a plain model and its optimizer is the STP gauge's, so a gauge "
        "change moves only the label) or --form materialized (stored tensors and multipliers in "
        "the forward, the optimizer in the gauge's stored units).",
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing DST (the old one stays until the new one is in place)")
    p.add_argument("--allow-lossy", action="store_true",
                   help="accept entries that overflow to inf or underflow to zero/subnormal "
                   "when scaled (reported; lossless is then false)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads that write DST (default: the CPU count, at most 8)")
    p.add_argument("--allow-unusual-roles", action="store_true",
                   help="confirm roles with no readout, no hidden tensor or only fixed tensors "
                   "(a headless encoder such as BertModel), refused otherwise; for a plain SRC")
    p.add_argument("--form", choices=["plain", "materialized"], default=None,
                   help="the form DST loads in with gaugeconv.hf.from_pretrained, and the units of "
                   "its optimizer.pt (default: plain; materialized with --stored)")
    p.add_argument("--stored", action="store_true",
                   help="write the stored tensors of gauge --to (format_version 1) instead of "
                   "effective ones. WARNING: plain loaders (AutoModel*.from_pretrained, vLLM) "
                   "read such a folder as a DIFFERENT function, without any warning; only "
                   "gaugeconv.hf.from_pretrained restores it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    import signal

    from .checkpoint import convert_checkpoint
    from .checkpoint.imports import preload

    def interrupted(signum, frame):  # SIGTERM and SIGHUP end it like Ctrl-C: folder removed
        raise KeyboardInterrupt(f"signal {signum}")

    _at_least("--workers", args.workers, 1)
    _positive_number("--gamma", args.gamma)
    # an ignored signal stays ignored (`nohup gaugeconv convert ...` survives its terminal)
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        imports = preload(args.src)  # timed apart: the report's import phase
        report = convert_checkpoint(
            args.src, args.dst, args.to, richness=args.richness, gamma=args.gamma,
            optimizer=args.optimizer, tied_role=args.tied_role, exact=args.exact,
            snap_pow2=args.snap_pow2, overwrite=args.overwrite, progress=not args.json,
            allow_lossy=args.allow_lossy, workers=args.workers,
            allow_unusual_roles=args.allow_unusual_roles,
            weights="stored" if args.stored else "effective", form=args.form,
        )
    except OSError as err:  # a full or read-only disk, a permission: the real error, one line
        raise GaugeError(str(err)) from None
    except KeyboardInterrupt:
        print("gaugeconv convert: interrupted; DST was not written (SRC untouched)",
              file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.stored:
        print("gaugeconv convert: warning: --stored wrote stored tensors (format 1); plain "
              "loaders such as AutoModel*.from_pretrained read DST as a different function",
              file=sys.stderr)
    if args.json:
        print(json.dumps({**report.to_json(), "seconds_import": imports}, indent=2))
        return 0
    print(f"{report.src} -> {report.dst}  ({report.model})")
    print(f"gauge {report.from_gauge['gauge']} ({report.source_form}) -> "
          f"{report.to_gauge['gauge']} ({report.form}) at "
          f"r={report.to_gauge['richness']:g}, {report.shards} shard(s), {report.tensors} tensors "
          f"({report.scaled} rescaled, {report.copied_raw} copied as raw bytes), "
          f"{report.bytes / 1e6:.1f} MB in {imports + report.seconds:.2f} s (imports "
          f"{imports:.2f} s, checks and plan {report.seconds_planning:.2f} s, writing "
          f"{report.seconds_writing:.2f} s)")
    if report.weights == "effective":
        print("weights: effective tensors (format 2), the function of SRC for any loader; "
              "gaugeconv.hf.from_pretrained restores the gauge")
    else:
        print("weights: stored tensors of the gauge (format 1); plain loaders read a DIFFERENT "
              "function, load with gaugeconv.hf.from_pretrained")
    print(f"optimizer.pt: {'converted' if report.optimizer else 'none'}   scheduler.pt: "
          f"{'converted' if report.scheduler else 'none'}")
    if report.source_format != "safetensors":
        print(f"read {report.source_format}, written as safetensors")
    if report.ignored:
        print(f"copied unchanged, ignored by from_pretrained: {', '.join(report.ignored[:6])}"
              + (" ..." if len(report.ignored) > 6 else ""))
    if report.left_out:
        print(f"left out (weights in another format, not converted): {', '.join(report.left_out)}")
    for note in report.notes:
        print(f"note: {note}")
    if report.lossy:
        print(f"LOSSY (--allow-lossy): {len(report.lossy)} tensor(s) overflowed or underflowed: "
              f"{', '.join(list(report.lossy)[:6])}")
    for item in report.optimizer_lossy:
        print(f"LOSSY (--allow-lossy): optimizer.pt {item}")
    if report.lossless:
        print("lossless: every scale factor is a power of two, no entry left the dtype's range")
    elif report.not_power_of_two:
        print(f"largest round-trip error: {report.max_roundtrip_rel_error:.2e} (relative); "
              f"{len(report.not_power_of_two)} tensor(s) with factors that are not powers of two "
              "(--exact refuses, --snap-pow2 avoids)")
    return 0


def _widths(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be integers like 128,256,512: {value!r}") from None
    if any(w < 2 for w in widths):
        raise argparse.ArgumentTypeError(f"every width must be >= 2: {value!r}")
    return widths


def _add_coord_check(sub: Any) -> None:
    p = sub.add_parser(
        "coord-check",
        help="train the reference MLP at several widths and fit each quantity's width exponent",
        description="Coordinate check with fitted exponents: per layer RMS(h) at init and after "
        "training, RMS(dh)/RMS(h), the layer's own-update share of dh, its share of the loss "
        "decrease, RMS(df) per step and gradient sizes, fitted against width over seeds, "
        "compared with THEORY.md section 7, with a verdict per desideratum (D0-D3, richness).",
    )
    p.add_argument("--richness", "-r", type=_richness, default=0.5)
    p.add_argument("--gauge", default="stp", help="stp, mup or rescaling (the result is the same)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--widths", type=_widths, default=(128, 256, 512, 1024, 2048, 4096))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=None, help="base lr (default 0.5 sgd, 0.05 adam)")
    p.add_argument("--tolerance", type=float, default=0.15, help="allowed |slope - theory|")
    p.add_argument("--negative-control", choices=["sp", "readout-too-large", "hidden-lr"],
                   default=None, help="check a deliberately broken family instead")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="write the plot there")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_coord_check)


def _cmd_coord_check(args: argparse.Namespace) -> int:
    from .data import load_data
    from .diagnostics.coord_check import (
        CoordCheckConfig,
        coord_check,
        format_report,
        mlp_factory,
        negative_lr_scale,
    )

    _check_widths(args.widths)
    _at_least("--seeds", args.seeds, 1)
    _at_least("--steps", args.steps, 1)
    _positive_number("--lr", args.lr)
    _positive_number("--tolerance", args.tolerance)
    _check_plot_path("--plot", args.plot)

    cfg = CoordCheckConfig(richness=args.richness, gauge=args.gauge, optimizer=args.optimizer,
                           widths=args.widths, seeds=args.seeds, steps=args.steps, lr=args.lr,
                           tolerance=args.tolerance)
    data = load_data(cfg.data)
    control = args.negative_control
    if control == "sp":  # SP's init is that of r = 0; judge it there
        cfg.richness = 0.0
    report = coord_check(cfg, mlp_factory(cfg, data, control), data,
                         lr_scale=negative_lr_scale(control), progress=not args.json)
    if args.plot:
        from .diagnostics.plots import plot_coord_check

        _write_plot("--plot", args.plot, plot_coord_check, report)
    if args.json:
        out = report.to_json()
        out["negative_control"] = control
        out["plot"] = args.plot
        print(json.dumps(out, indent=2))
    else:
        print(format_report(report))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0 if report.passed else 1


def _parse_abc(text: str) -> dict[str, list[float]]:
    out = {}
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        role, _, nums = part.partition("=")
        try:
            values = [float(x) for x in nums.split(",")]
        except ValueError:
            values = []
        if not all(math.isfinite(v) for v in values):
            raise GaugeError(f"--abc part {part!r}: exponents must be finite numbers")
        if role not in ("readin", "hidden", "readout") or len(values) != 3:
            raise GaugeError(f"--abc part {part!r}: expected ROLE=a,b,c with ROLE readin, hidden "
                             "or readout")
        out[role] = values
    missing = {"readin", "hidden", "readout"} - set(out)
    if missing:
        raise GaugeError(f"--abc lacks {sorted(missing)}")
    return out


MEASURED_FIELDS = ("multiplier", "init_std", "lr", "fan_in")


def _read_measured(path: str) -> dict[int, dict[str, dict[str, float]]]:
    """classify --measured FILE: {width: {role: {multiplier, init_std, lr, fan_in}}}, checked."""
    from .jsonfile import read_json

    try:
        raw = read_json(path, f"--measured {path}")
    except OSError as err:
        raise GaugeError(f"--measured {path}: cannot read it ({err.strerror})") from None
    if not isinstance(raw, dict):
        raise GaugeError(f"--measured {path}: expected an object {{width: {{role: {{...}}}}}}, "
                         f"not a {type(raw).__name__}")
    out: dict[int, dict[str, dict[str, float]]] = {}
    for w, roles in raw.items():
        try:
            width = int(w)
        except ValueError:
            width = 0
        if width < 1 or str(width) != w.strip():
            raise GaugeError(f"--measured {path}: key {w!r} is not a width (a positive integer)")
        if width in out:
            raise GaugeError(f"--measured {path}: width {width} appears twice")
        if not isinstance(roles, dict):
            raise GaugeError(f"--measured {path}: [{w}] is not an object of roles")
        missing = {"readin", "hidden", "readout"} - set(roles)
        if missing:
            raise GaugeError(f"--measured {path}: [{w}] lacks role(s) {sorted(missing)}")
        for role, values in roles.items():
            if not isinstance(values, dict):
                raise GaugeError(f"--measured {path}: [{w}][{role}] is not an object")
            for key in MEASURED_FIELDS:
                v = values.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                        not math.isfinite(v) or v <= 0:
                    raise GaugeError(f"--measured {path}: [{w}][{role}][{key!r}] is {v!r}, not a "
                                     "finite positive number")
        out[width] = roles
    if len(out) < 2:
        raise GaugeError(f"--measured {path}: values at two or more widths are needed")
    return out


def _add_classify(sub: Any) -> None:
    from .diagnostics.classify import PRESETS

    p = sub.add_parser(
        "classify",
        help="is a parameterization in the richness family? which r and gauge, or what fails",
        description="Classify per-role abc exponents (W = n^-a w, w ~ N(0, n^-2b), lr = eta "
        "n^-c), a preset, or multipliers/init stds/lrs measured at two or more widths (a JSON "
        "file {width: {role: {multiplier, init_std, lr, fan_in}}}).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS))
    src.add_argument("--abc", help='e.g. "readin=0,0,0; hidden=0,0.5,0; readout=0,0.5,0"')
    src.add_argument("--measured", metavar="FILE.json")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="optimizer family (default sgd; a preset brings its own)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_classify)


def _cmd_classify(args: argparse.Namespace) -> int:
    from .diagnostics.classify import PRESETS, classify_abc, classify_measured

    if args.preset:
        family, abc = PRESETS[args.preset]
        result = classify_abc(abc, args.optimizer or family)
    elif args.abc:
        result = classify_abc(_parse_abc(args.abc), args.optimizer or "sgd")
    else:
        result = classify_measured(_read_measured(args.measured), args.optimizer or "sgd")
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    abc = result.abc
    print("abc exponents: " + "; ".join(f"{k}=({', '.join(f'{x:g}' for x in v)})"
                                        for k, v in abc.items()))
    if result.in_family:
        print(f"in the richness family: r = {result.richness:g}, gauge {' = '.join(result.gauges)}"
              + (f" (named point {result.named_point})" if result.named_point else ""))
        if result.gamma is not None:
            print(f"gamma = {result.gamma:.4g}, eta = {result.eta:.4g}")
    else:
        print("NOT in the richness family:")
        for f in result.failures:
            print(f"  {f['role']:<8} {f['desideratum']:<9} {f['quantity']} {f['have']:g}, "
                  f"needs {f['expected']:g}: {f['why']}")
        n = result.nearest
        print(f"nearest member: r = {n['richness']:g}, gauge {' = '.join(n['gauges'])}, abc "
              + "; ".join(f"{k}=({', '.join(f'{x:g}' for x in v)})" for k, v in n["abc"].items()))
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _add_lazy(sub: Any) -> None:
    p = sub.add_parser(
        "lazy-check",
        help="distance between the trained network and its trained linearization vs width",
        description="Train the reference tanh MLP (float64, full-batch SGD) and its "
        "linearization around init on the same data; fit how their relative distance on "
        "held-out inputs scales with width (expected slope 2r - 1: lazy for r < 1/2).",
    )
    p.add_argument("--richness", "-r", type=_richness, default=0.0)
    p.add_argument("--widths", type=_widths, default=(128, 256, 512, 1024, 2048))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_lazy)


def _cmd_lazy(args: argparse.Namespace) -> int:
    from .diagnostics.lazy import LazyConfig, lazy_limit
    from .richness import Richness

    Richness(args.richness)
    _check_widths(args.widths)
    _at_least("--seeds", args.seeds, 1)
    _at_least("--steps", args.steps, 1)
    _positive_number("--lr", args.lr)
    out = lazy_limit(LazyConfig(richness=args.richness, widths=args.widths, seeds=args.seeds,
                                steps=args.steps, lr=args.lr), progress=not args.json)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if out["pass"] else 1
    print(f"lazy-limit check at r={args.richness:g} ({out['data']})")
    for w, d in zip(out["config"]["widths"], out["distance"]):
        print(f"  width {w:>5}: ||f - f_lin|| / ||f - f_0|| = {d:.4g}")
    print(f"slope {out['slope']:+.3f} +- {out['stderr']:.3f}, expected 2r - 1 = "
          f"{out['expected']:+.3f}: {'pass' if out['pass'] else 'FAIL'}; the network "
          + ("approaches its linearization (lazy)" if out["approaches_linearization"]
             else "does not approach its linearization (rich)"))
    return 0 if out["pass"] else 1


def _log2_range(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give LO,HI (log2 of the lr), like -10,2: {value!r}") from None
    if hi <= lo:
        raise argparse.ArgumentTypeError(f"--log2-lr {value}: HI must exceed LO")
    return lo, hi


def _add_transfer(sub: Any) -> None:
    p = sub.add_parser(
        "transfer-check",
        help="learning-rate sweeps across widths: does the optimum transfer, in every gauge?",
        description="muTransfer, measured. Train the reference MLP (tanh, depth 3) on "
        "scikit-learn's digits (a fixed 75/25 train/held-out split) at every base lr of a "
        "log2 grid, at several widths and seeds, for a fixed number of minibatch steps "
        "(linear warm-up over 10% of them, then linear decay to 0); interpolate the optimal lr per "
        "width and fit its drift per doubling of width (mean and standard error over seeds). "
        "Verdicts: at --richness the optimum is stable (|drift| <= max(--tolerance, 3 stderr)) "
        "and wider is not worse; the same sweep run in the STP, muP and rescaling gauges is "
        "identical (bit for bit where every gauge factor is a power of two); the standard "
        "parameterization with one global lr (SP, the negative control) drifts. "
        "The default (widths 64-512, 1 lr per octave, 2 seeds, 60 steps, SGD and Adam) is the "
        "quick check (fewer widths and lrs than the README's figures, which use --widths "
        "64,128,256,512,1024 --per-octave 2 --richness-axis 0,0.25 and wider lr grids: "
        "about 8 minutes of CPU time per optimizer).",
    )
    p.add_argument("--richness", "-r", type=_richness, default=0.5)
    p.add_argument("--optimizer", choices=["sgd", "adam", "both"], default="both")
    p.add_argument("--widths", type=_widths, default=(64, 128, 256, 512))
    p.add_argument("--log2-lr", type=_log2_range, default=None, metavar="LO,HI",
                   help="lr grid 2^LO .. 2^HI (default -4,5 for sgd, -9,3 for adam)")
    p.add_argument("--per-octave", type=int, default=1, help="grid points per octave of lr")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default plain SGD)")
    p.add_argument("--gauges", default="stp,mup,rescaling",
                   help="comma-separated gauges to sweep and compare (the first is the reference)")
    p.add_argument("--no-control", action="store_true", help="skip the SP negative control")
    p.add_argument("--richness-axis", default="",
                   help="extra richnesses to sweep in muP gauge, e.g. 0,0.25 (best loss vs width)")
    p.add_argument("--metric", choices=["train_loss", "test_loss"], default="train_loss",
                   help="what the optimum minimises")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="floor of the allowed |drift| of log2(lr*) per doubling")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="loss vs lr, one panel per gauge and the control, one row per optimizer")
    p.add_argument("--plot-richness", metavar="FILE.png", default=None,
                   help="best loss vs width per richness (needs --richness-axis)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every number")
    p.set_defaults(func=_cmd_transfer)


def _cmd_transfer(args: argparse.Namespace) -> int:
    from .diagnostics.transfer import TransferConfig, format_report, transfer_check
    from .gauges import get_gauge

    gauges = tuple(g.strip() for g in args.gauges.split(",") if g.strip())
    for g in gauges:
        get_gauge(g)  # an unknown gauge: a one-line error before any training
    try:
        axis = tuple(float(r) for r in args.richness_axis.split(",") if r.strip())
    except ValueError:
        raise GaugeError(f"--richness-axis {args.richness_axis!r}: give numbers like 0,0.25") from None
    for r in (args.richness, *axis):
        from .richness import Richness

        Richness(r)
    if args.plot_richness and not axis:
        raise GaugeError("--plot-richness needs --richness-axis (e.g. 0,0.25)")
    _check_plot_path("--plot", args.plot)
    _check_plot_path("--plot-richness", args.plot_richness)
    if args.per_octave < 1 or args.seeds < 1 or args.steps < 1:
        raise GaugeError("--per-octave, --seeds and --steps must be positive")
    optimizers = ["sgd", "adam"] if args.optimizer == "both" else [args.optimizer]
    reports = []
    for opt in optimizers:
        cfg = TransferConfig(richness=args.richness, optimizer=opt, widths=args.widths,
                             log2_lr=args.log2_lr, per_octave=args.per_octave, seeds=args.seeds,
                             steps=args.steps, batch_size=args.batch_size, metric=args.metric,
                             tolerance=args.tolerance, momentum=args.momentum)
        reports.append(transfer_check(cfg, gauges, control=not args.no_control,
                                      richness_axis=axis, progress=not args.json))
        if not args.json:
            print(format_report(reports[-1]) + "\n", flush=True)
    if args.plot or args.plot_richness:
        from .diagnostics.transfer_plots import plot_richness_axis, plot_transfer

        if args.plot:
            _write_plot("--plot", args.plot, plot_transfer, reports)
        if args.plot_richness:
            _write_plot("--plot-richness", args.plot_richness, plot_richness_axis, reports)
    passed = all(r.passed for r in reports)
    if args.json:
        print(json.dumps({"passed": passed, "plot": args.plot, "plot_richness": args.plot_richness,
                          "reports": {r.config["optimizer"]: r.to_json() for r in reports}}))
    else:
        for f in (args.plot, args.plot_richness):
            if f:
                print(f"plot: {f}")
        print("transfer-check: " + ("PASS" if passed else "FAIL"))
    return 0 if passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaugeconv",
        description="Richness-r parameterizations of wide networks and exact conversion between "
        "their gauges (STP, muP, rescaling).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gaugeconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_table, _add_verify, _add_demo, _add_roles, _add_convert, _add_coord_check,
                _add_classify, _add_lazy):
        add(sub)
    _add_transfer(sub)
    return parser


def _check_richness_args(args: argparse.Namespace) -> None:
    """--richness and --gamma of any command, before the command runs: NaN, inf, r outside
    [0, 1/2] and a gamma whose square leaves float64's normal range are one-line errors."""
    from .richness import check_gamma, check_richness

    if getattr(args, "richness", None) is not None:
        check_richness(args.richness)
    if getattr(args, "gamma", None) is not None:
        check_gamma(args.gamma, "--gamma")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _check_richness_args(args)
        return args.func(args)
    except GaugeError as err:
        print(f"gaugeconv {args.command}: error: {err}", file=sys.stderr)
        return 2


def run() -> None:
    """The console entry point (``gaugeconv``, ``python -m gaugeconv``): main(), then exit.

    A command that imported torch and transformers ends with ``os._exit``: the interpreter's
    teardown of those (some 400k objects, libtorch's static destructors) took 0.5 to 3 s per
    run and writes nothing. By then every file is closed (convert fsyncs and places DST before it
    returns); stdout, stderr and logging are flushed here. main() itself returns normally, for
    callers in Python.
    """
    code = main()
    if "torch" not in sys.modules:
        sys.exit(code)
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
