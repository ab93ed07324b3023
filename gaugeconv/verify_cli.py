"""The arguments of `gaugeconv verify` and its two modes: the reference MLP, or saved folders.

``gaugeconv verify`` without folders trains the reference MLP in two gauges (``verify.py``);
``gaugeconv verify SRC --to GAUGE`` and ``gaugeconv verify SRC DST`` compare saved folders
(``verify_folders.py``). Options that mean something in one mode only are refused in the other,
by name; shared options whose defaults differ (--steps, --batch-size, --weight-decay, --to)
are resolved per mode.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .errors import GaugeError

__all__ = ["add_verify_arguments", "folder_config", "mlp_defaults", "DESCRIPTION"]

_PARAGRAPHS = (
    "Prove that two gauges train the same model: train both side by side on the same batches "
    "and report per step the largest relative difference of loss, logits and effective weights "
    "W = m*w, with a verdict against tolerances that follow the dtype (folders: float64 9.1e-13, "
    "float32 7.6e-6, bit-identical required where every factor between the two sides is a "
    "power of two; the MLP: 1e-10, 1e-4). Exit code 0: equivalent, 1: not, 2: bad input.",
    "Folders: `gaugeconv verify SRC --to GAUGE` converts SRC in memory; `gaugeconv verify SRC "
    "DST` compares two folders (DST written by `gaugeconv convert`, or any folder claiming SRC's "
    "function). Both are loaded in memory, nothing is written to them and no code from them "
    "runs. A Trainer checkpoint (optimizer.pt, scheduler.pt) is resumed on both sides as the "
    "Trainer resumes it and the continuation is compared; other folders start fresh optimizers "
    "from GaugeOptimizerFactory in each gauge. Each side trains in the MATERIALIZED form of its "
    "gauge by default (--form): stored tensors w = W/m, multipliers in the forward, the "
    "optimizer in the gauge's stored units, which is where gauges differ and a conversion can "
    "be wrong (in the plain form every gauge trains the identical model with identical "
    "groups). Data: synthetic tokens from the vocabulary (pixels for vision models) unless "
    "--data. Causal and masked LMs, encoder-decoders, classifiers and headless models are fed; "
    "anything else is refused by name.",
    "Without folders: the reference MLP on scikit-learn's digits, trained in gauge --from and "
    "in gauge --to (or converted at --convert-at).",
)
DESCRIPTION = "\n\n".join(textwrap.fill(p, 88) for p in _PARAGRAPHS)

_MLP_ONLY = {"from_gauge": "--from", "width": "--width", "depth": "--depth",
             "convert_at": "--convert-at", "activation": "--activation"}
_FOLDER_ONLY = {"form": "--form", "plot": "--plot", "seq_len": "--seq-len",
                "allow_unusual_roles": "--allow-unusual-roles", "fresh": "--fresh",
                "max_grad_norm": "--max-grad-norm"}
_MLP_DEFAULTS = {"from_gauge": "stp", "to_gauge": "mup", "optimizer": "sgd", "steps": 50,
                 "width": 256, "depth": 3, "dtype": "float64", "batch_size": 64,
                 "weight_decay": 1e-3, "data": "digits", "activation": "tanh"}


def add_verify_arguments(p: argparse.ArgumentParser, richness_type: Any) -> None:
    """Every option of `gaugeconv verify`, both modes."""
    p.add_argument("folders", nargs="*", metavar="SRC [DST]",
                   help="saved folders (save_pretrained or Trainer checkpoint-N); none: the "
                   "reference MLP")
    p.add_argument("--to", dest="to_gauge", default=None,
                   help="gauge or named point of side B (folders: convert SRC to it in memory; "
                   "MLP: default mup)")
    p.add_argument("--richness", "-r", type=richness_type, default=None,
                   help="r in [0, 0.5]: of a plain (gauge-less) SRC; MLP: default 0.5 or the "
                   "named point's")
    p.add_argument("--gamma", type=float, default=1.0, help="gamma of a plain SRC / the MLP")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=None,
                   help="fresh runs: default adamw for an Adam-family gauge, sgd for SGD (MLP: "
                   "sgd); a plain SRC's optimizer family follows it")
    p.add_argument("--steps", type=int, default=None, help="default 10 (folders), 50 (MLP)")
    p.add_argument("--dtype", choices=["float64", "float32", "bfloat16", "as-saved"],
                   default=None, help="default float64, the sharpest test; as-saved: the "
                   "folder's dtype (folders only); the MLP takes float32 or float64")
    p.add_argument("--lr", type=float, default=None,
                   help="base (effective-space) learning rate of fresh runs (folders: 1e-3 "
                   "Adam, 0.05 SGD)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default 0.01 (folders), 1e-3 (MLP)")
    p.add_argument("--eps", type=float, default=1e-8, help="Adam eps (effective space)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4 (folders), 64 (MLP)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="folders: a .jsonl of texts (tokenized with the folder's tokenizer.json) "
                   "or a .pt tensor of input_ids [N, T] (pixel_values [N, C, H, W] for vision "
                   "models); default synthetic. MLP: digits (default) or synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed relative difference (default from the dtype)")
    p.add_argument("--negative-control", choices=["eps", "multiplier", "lr"], default=None,
                   help="break one rule on side B, so the check must fail: eps (Adam's eps rule "
                   "left out), multiplier (folders: one tensor's multiplier dropped in the "
                   "forward), lr (MLP: the lr rule off by one degree)")
    p.add_argument("--form", choices=["materialized", "plain", "as-saved"], default=None,
                   help="folders: the form both sides train in (default materialized)")
    p.add_argument("--fresh", action="store_true",
                   help="folders: start fresh optimizers even for Trainer checkpoints")
    p.add_argument("--seq-len", type=int, default=None, help="folders: tokens per row (16)")
    p.add_argument("--max-grad-norm", type=float, default=None,
                   help="folders, fresh runs: clip by the effective-gradient norm (default off; "
                   "resumed runs use the checkpoint's)")
    p.add_argument("--allow-unusual-roles", action="store_true",
                   help="folders: confirm a plain SRC whose roles have no readout or no hidden "
                   "tensor (a headless encoder such as BertModel)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="folders: per-step differences on a log axis")
    p.add_argument("--from", dest="from_gauge", default=None,
                   help="MLP: gauge or named point of run A (default stp)")
    p.add_argument("--width", type=int, default=None, help="MLP: hidden width (256)")
    p.add_argument("--depth", type=int, default=None, help="MLP: layers (3)")
    p.add_argument("--convert-at", type=int, default=None, metavar="STEP",
                   help="MLP: train B in FROM, convert model+optimizer+scheduler to TO before STEP")
    p.add_argument("--activation", choices=["relu", "tanh", "gelu", "linear"], default=None,
                   help="MLP: tanh by default (a ReLU kink within rounding can split float32 "
                   "runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _refuse(args: argparse.Namespace, options: dict[str, str], mode: str) -> None:
    for key, flag in options.items():
        value = getattr(args, key)
        if value not in (None, False):
            raise GaugeError(f"{flag} applies to {mode}")


def mlp_defaults(args: argparse.Namespace) -> None:
    """Fill the reference MLP's defaults in place; refuse the folder-only options."""
    _refuse(args, _FOLDER_ONLY, "saved folders (gaugeconv verify SRC ...), not to the MLP")
    for key, value in _MLP_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dtype not in ("float32", "float64"):
        raise GaugeError(f"--dtype {args.dtype}: the reference MLP trains in float32 or float64")
    if args.data not in ("digits", "synthetic"):
        raise GaugeError(f"--data {args.data!r}: the reference MLP takes digits or synthetic "
                         "(a file applies to folders)")
    if args.negative_control == "multiplier":
        raise GaugeError("--negative-control multiplier applies to folders; the MLP takes eps "
                         "or lr")


def folder_config(args: argparse.Namespace) -> Any:
    """The FolderVerifyConfig of `gaugeconv verify SRC [DST]`."""
    from .verify_folders import FolderVerifyConfig

    if len(args.folders) > 2:
        raise GaugeError(f"give SRC and at most one DST, not {len(args.folders)} folders")
    _refuse(args, _MLP_ONLY, "the reference MLP (gaugeconv verify without folders)")
    if args.negative_control == "lr":
        raise GaugeError("--negative-control lr applies to the reference MLP; folders take eps "
                         "or multiplier")
    family = "sgd" if args.optimizer == "sgd" else "adam"
    given = {
        "src": args.folders[0], "dst": args.folders[1] if len(args.folders) == 2 else None,
        "to": args.to_gauge, "steps": args.steps, "dtype": args.dtype, "form": args.form,
        "data": args.data, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "optimizer": args.optimizer, "lr": args.lr, "eps": args.eps,
        "weight_decay": args.weight_decay, "momentum": args.momentum,
        "max_grad_norm": args.max_grad_norm, "seed": args.seed, "richness": args.richness,
        "gamma": args.gamma, "family": family, "allow_unusual_roles": args.allow_unusual_roles,
        "negative_control": args.negative_control, "tolerance": args.tolerance,
        "fresh": args.fresh, "plot": args.plot,
    }
    return FolderVerifyConfig(**{k: v for k, v in given.items() if v is not None})


def run_folders(args: argparse.Namespace) -> int:
    """`gaugeconv verify SRC [DST]`: print the report (or JSON); 0 equivalent, 1 not."""
    from .equivalence.report import format_report
    from .verify_folders import verify_folders

    cfg = folder_config(args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # this process prints its own progress
    report = verify_folders(cfg, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(format_report(report))
    return 0 if report.equivalent else 1
