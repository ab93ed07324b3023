"""`gaugeconv verify` on saved folders: is B the same training run as A?

Two forms of the question:

* ``SRC --to GAUGE``: A is SRC in its recorded gauge; B is SRC converted in memory to GAUGE
  (``gaugeconv.hf.convert_gauge``, with its optimizer and schedule for a Trainer checkpoint).
* ``SRC DST``: A is SRC, B is DST, each in its recorded gauge (DST written by
  ``gaugeconv convert``, or any folder claiming SRC's function).

Both folders are loaded in memory (no code from them runs, nothing is written to them). A
Trainer checkpoint (optimizer.pt) is *resumed* on both sides as the Trainer would resume it
(``hf/resume.py``) and the continuation is compared; otherwise both sides start fresh with the
optimizer their gauge prescribes (``GaugeOptimizerFactory``). Each side trains in the comparison
form, the materialized one by default: its Parameters hold the gauge's stored tensors w = W/m,
the multipliers act in the forward and the optimizer runs in the gauge's stored units, which is
where gauges differ and where a conversion can be wrong (in the plain form every gauge trains the
identical model with identical groups). The two runs see the same batches (``hf/feed.py``) and
are compared step by step (``equivalence``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .equivalence.controls import (
    CONTROLS,
    drop_multiplier,
    leave_eps_unmoved,
    multiplier_candidate,
)
from .equivalence.engine import Side, run_side_by_side
from .equivalence.report import EquivalenceReport
from .errors import GaugeError
from .forms import MATERIALIZED, PLAIN
from .tensor_ops import is_power_of_two

__all__ = ["FolderVerifyConfig", "verify_folders", "DTYPE_NAMES", "FORMS"]

DTYPE_NAMES = {"float64": torch.float64, "float32": torch.float32,
               "bfloat16": torch.bfloat16, "as-saved": "auto"}
FORMS = (MATERIALIZED, PLAIN, "as-saved")
DEFAULT_LR = {"sgd": 0.05}  # Adam-type: 1e-3


@dataclass
class FolderVerifyConfig:
    src: str
    dst: str | None = None
    to: str | None = None
    steps: int = 10
    dtype: str = "float64"
    form: str = MATERIALIZED
    data: str | None = None
    batch_size: int = 4
    seq_len: int = 16
    optimizer: str | None = None  # fresh runs: default adamw (Adam family) or sgd
    lr: float | None = None
    eps: float = 1e-8
    weight_decay: float = 0.01
    momentum: float = 0.9
    max_grad_norm: float = 0.0
    seed: int = 0
    richness: float | None = None  # of a plain (gauge-less) folder
    gamma: float = 1.0
    family: str = "adam"  # optimizer family of a plain folder
    allow_unusual_roles: bool = False
    negative_control: str | None = None
    tolerance: float | None = None
    fresh: bool = False  # ignore optimizer.pt: fresh optimizers even for a Trainer checkpoint
    plot: str | None = None


def _positive(name: str, value: float | None, zero_ok: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise GaugeError(f"{name} must be a finite {'non-negative' if zero_ok else 'positive'} "
                         f"number, not {value}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_config(cfg: FolderVerifyConfig) -> None:
    """Every argument checked before anything is loaded; one-line errors naming the item."""
    for name in ("steps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise GaugeError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        raise GaugeError(f"--seq-len must be >= 2, not {cfg.seq_len}")
    for name in ("lr", "eps", "tolerance", "gamma"):
        _positive(f"--{name}", getattr(cfg, name))
    for name in ("weight_decay", "max_grad_norm"):
        _positive(f"--{name.replace('_', '-')}", getattr(cfg, name), zero_ok=True)
    if cfg.dtype not in DTYPE_NAMES:
        raise GaugeError(f"--dtype {cfg.dtype!r}: give one of {', '.join(DTYPE_NAMES)}")
    if cfg.form not in FORMS:
        raise GaugeError(f"--form {cfg.form!r}: give one of {', '.join(FORMS)}")
    if cfg.negative_control is not None and cfg.negative_control not in CONTROLS:
        raise GaugeError(f"--negative-control {cfg.negative_control!r}: give one of "
                         f"{', '.join(CONTROLS)}")
    if cfg.dst is not None and cfg.to is not None:
        raise GaugeError("give DST (a converted folder) or --to GAUGE (convert SRC in memory), "
                         "not both")
    if cfg.dst is None and cfg.to is None:
        raise GaugeError("give DST (a converted folder) or --to GAUGE (convert SRC in memory)")
    folders = [("SRC", cfg.src)] + ([("DST", cfg.dst)] if cfg.dst is not None else [])
    for role, folder in folders:
        if not Path(folder).is_dir():
            raise GaugeError(f"{role} {folder} is not a folder" if Path(folder).exists()
                             else f"{role} {folder}: no such folder")
        if not (Path(folder) / "config.json").is_file():
            raise GaugeError(f"{role} {folder} has no config.json: not a save_pretrained folder")
    if cfg.plot is not None:
        plot = Path(cfg.plot)
        if plot.suffix.lower() != ".png":
            raise GaugeError(f"--plot {cfg.plot}: give a .png file name")
        if not plot.parent.resolve().is_dir():
            raise GaugeError(f"--plot {cfg.plot}: the folder {plot.parent} does not exist")
        for role, folder in folders:
            if _inside(plot, Path(folder)):
                raise GaugeError(f"--plot {cfg.plot} is inside {role} {folder}: verify writes "
                                 "nothing into the folders it reads")
    if cfg.data is not None and not Path(cfg.data).is_file():
        raise GaugeError(f"--data {cfg.data}: no such file")


def _target_gauge(to: str, richness: float) -> str:
    from .gauges import resolve_point

    gauge, r = resolve_point(to, richness)
    if r != richness:
        raise GaugeError(f"{to!r} is at r={r}, SRC at r={richness}: a gauge change keeps the "
                         "richness fixed")
    return gauge.name


def _applied(param: Any, form: str) -> Any:
    from .model import _applied as applied

    return applied(param, form)


def _same_model(a: Any, b: Any, src: str, dst: str) -> None:
    if type(a) is not type(b):
        raise GaugeError(f"SRC is a {type(a).__name__}, DST a {type(b).__name__}: not the same "
                         "model")
    pa = {n: tuple(p.shape) for n, p in a.named_parameters()}
    pb = {n: tuple(p.shape) for n, p in b.named_parameters()}
    if pa != pb:
        diff = sorted(set(pa.items()) ^ set(pb.items()))
        raise GaugeError(f"SRC {src} and DST {dst} have different tensors: {diff[:3]}")


def _pow2(*factor_maps: dict[str, float]) -> bool:
    return all(is_power_of_two(s) for m in factor_maps for s in m.values())


def _fresh_optimizer(model: Any, cfg: FolderVerifyConfig, family: str) -> Any:
    from .hf.trainer import GaugeOptimizerFactory

    name = cfg.optimizer or ("sgd" if family == "sgd" else "adamw")
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR.get(name, 1e-3)
    hyper: dict[str, Any] = {"weight_decay": cfg.weight_decay}
    if name == "sgd":
        hyper["momentum"] = cfg.momentum
    else:
        hyper["eps"] = cfg.eps
    return GaugeOptimizerFactory()(model, name, lr=lr, **hyper)


def _describe_optimizer(opt: Any, cfg: FolderVerifyConfig) -> str:
    name = type(opt).__name__
    base = opt.param_groups[0]["lr"]
    hyper = f"momentum {cfg.momentum:g}" if name == "SGD" else f"eps {cfg.eps:g}"
    return (f"{name} lr {base:g}, {hyper}, weight decay {cfg.weight_decay:g} (effective-space "
            f"values); {len(opt.param_groups)} groups built by GaugeOptimizerFactory in each gauge")


def verify_folders(cfg: FolderVerifyConfig, progress: bool = False) -> EquivalenceReport:
    """Load, (resume,) move both sides to the comparison form, train and compare; see above."""
    from .hf.config import GaugeConfig
    from .hf.feed import feed_for
    from .hf.load import folder_gauge, load_folder
    from .hf.model import convert_gauge, get_gauged
    from .hf.resume import read_trainer_checkpoint, restore_optimizer

    check_config(cfg)
    plain = None
    if cfg.richness is not None:
        plain = GaugeConfig(richness=cfg.richness, gauge="stp", gamma=cfg.gamma,
                            optimizer=cfg.family, allow_unusual_roles=cfg.allow_unusual_roles)
    src = Path(cfg.src)
    dst = Path(cfg.dst) if cfg.dst is not None else None
    notes: list[str] = []
    if plain is None and dst is not None:
        plain, why = _plain_from_the_other(src, dst)
        notes += [why] if why else []
    src_gauge, _ = folder_gauge(src, plain)
    if cfg.richness is not None and cfg.richness != src_gauge.richness:
        raise GaugeError(f"SRC is at r={src_gauge.richness}; --richness {cfg.richness} was given")
    target = _target_gauge(cfg.to, src_gauge.richness) if cfg.to is not None else None
    ck_a = None if cfg.fresh else read_trainer_checkpoint(src)
    ck_b = ck_a if dst is None else (None if cfg.fresh else read_trainer_checkpoint(dst))
    if (ck_a is None) != (ck_b is None):
        has, lacks = ("SRC", "DST") if ck_a is not None else ("DST", "SRC")
        raise GaugeError(f"{has} is a Trainer checkpoint (optimizer.pt), {lacks} is not: resume "
                         "both or neither (--fresh ignores optimizer.pt)")
    steps, capped = _steps(cfg.steps, ck_a)
    notes += capped
    dtype = DTYPE_NAMES[cfg.dtype]
    model_a = load_folder(src, dtype, plain)
    model_b = load_folder(dst if dst is not None else src, dtype, plain)
    if dst is not None:
        _same_model(model_a, model_b, str(src), str(dst))
    if next(p.dtype for p in model_a.parameters()) == torch.float16:
        raise GaugeError("the folder is float16: pure float16 training underflows in the "
                         "materialized form of gauges whose multipliers are far from 1 (the "
                         "stored gradients are m times the effective ones); give --dtype "
                         "float32, bfloat16 or float64")
    feed_folder = src if (src / "tokenizer.json").is_file() or dst is None else dst
    feed = feed_for(model_a, steps, cfg.batch_size, cfg.seq_len, cfg.data, feed_folder,
                    cfg.seed)  # refuses what it cannot feed before anything trains
    ga, gb = get_gauged(model_a), get_gauged(model_b)
    try:
        ga.parameterization.scales_to(gb.parameterization)
    except GaugeError as err:
        raise GaugeError(f"SRC and DST are not two gauges of one parameterization: {err}") \
            from None
    family = ga.parameterization.family.value
    origin_a, origin_b = ga.applied, gb.applied
    form_a = ga.form if cfg.form == "as-saved" else cfg.form
    form_b = gb.form if cfg.form == "as-saved" else cfg.form
    opts: list[Any] = [None, None]
    scheds: list[list[Any]] = [[], []]
    clips = [cfg.max_grad_norm, cfg.max_grad_norm]
    if ck_a is not None:
        for i, (model, ck) in enumerate(((model_a, ck_a), (model_b, ck_b))):
            opts[i], scheds[i], clips[i], side_notes = restore_optimizer(model, ck)
            notes += [n for n in side_notes if n not in notes]
    convert_gauge(model_a, None, opts[0], scheds[0], form=form_a)
    convert_gauge(model_b, target, opts[1], scheds[1], form=form_b)
    if ck_a is None:
        opts = [_fresh_optimizer(model_a, cfg, family), _fresh_optimizer(model_b, cfg, family)]
    applied_a, applied_b = ga.applied, gb.applied
    starts = [origin_a, origin_a] if ck_a is not None else \
        [_applied(ga.parameterization, PLAIN), _applied(gb.parameterization, PLAIN)]
    control = _apply_control(cfg.negative_control, (ga, gb), opts, starts)
    expected = _pow2(applied_a.scales_to(applied_b), origin_a.scales_to(applied_a),
                     origin_b.scales_to(applied_b),
                     origin_a.scales_to(origin_b) if dst is not None else {})
    sides = []
    for i, (model, g, form) in enumerate(((model_a, ga, form_a), (model_b, gb, form_b))):
        sides.append(Side(_label(i, cfg, g, form, target), model, g, opts[i], scheds[i],
                          clips[i]))
    report = run_side_by_side(sides[0], sides[1], feed.batches, feed.loss, steps,
                              next(p.dtype for p in model_a.parameters()), cfg.tolerance,
                              expected_bit_identical=expected, seed=cfg.seed, progress=progress)
    report.negative_control = control
    report.context = _context(cfg, steps, model_a, ga, ck_a, opts[0], feed.description, form_a,
                              form_b)
    if form_a == form_b == PLAIN:
        notes.append("both sides in the plain form: every gauge trains the identical model with "
                     "the STP gauge's groups there, so this checks the folders' function and "
                     "optimizer state, not the gauges' stored units (use --form materialized)")
    report.notes = notes
    if cfg.plot is not None:
        from .equivalence.plot import plot_report

        report.plot = plot_report(report, cfg.plot)
    return report


def _label(i: int, cfg: FolderVerifyConfig, g: Any, form: str, target: str | None) -> str:
    where = cfg.src if i == 0 or cfg.dst is None else cfg.dst
    what = f"{g.gauge.name} gauge, {form} form"
    if i == 1 and target is not None:
        return f"{where} converted in memory to the {what}"
    return f"{where} ({what})"


def _plain_from_the_other(src: Path, dst: Path) -> tuple[Any, str | None]:
    """A folder without a gauge entry beside one with an entry: the STP gauge of the other's
    parameterization (richness, gamma, family, roles), as `gaugeconv convert` recorded it."""
    from .hf.inspect import read_config
    from .hf.load import folder_gauge

    has = {role: read_config(f).get("gaugeconv") is not None for role, f in
           (("SRC", src), ("DST", dst))}
    if has["SRC"] == has["DST"]:
        return None, None
    plain_role, other = ("SRC", dst) if has["DST"] else ("DST", src)
    gauge, _ = folder_gauge(other, None)
    stp = gauge.replace(gauge="stp", multipliers=None, form=PLAIN)
    return stp, (f"{plain_role} has no gauge entry: taken as the STP gauge at the other "
                 f"folder's r={gauge.richness:g}")


def _steps(want: int, ck: Any) -> tuple[int, list[str]]:
    """The Trainer stops at max_steps: a resumed comparison does too."""
    if ck is None or not ck.max_steps:
        return want, []
    left = ck.max_steps - ck.global_step
    if left < 1:
        raise GaugeError(f"{ck.folder} is the end of its run (step {ck.global_step} of "
                         f"{ck.max_steps}): there is nothing to resume; --fresh compares fresh "
                         "optimizers instead")
    if want > left:
        return left, [f"the Trainer stops at step {ck.max_steps}: {left} steps compared "
                      f"instead of {want}"]
    return want, []


def _context(cfg: FolderVerifyConfig, steps: int, model: Any, g: Any, ck: Any, opt: Any, data: str,
             form_a: str, form_b: str) -> dict[str, Any]:
    p = g.parameterization
    out: dict[str, Any] = {
        "model": f"{type(model).__name__}, r={p.richness.r:g}, gamma={p.richness.gamma:g}, "
                 f"{p.family.value} family, width {p.width}",
        "data": data,
    }
    if ck is not None:
        total = f" of {ck.max_steps}" if ck.max_steps else ""
        out["start"] = (f"resumed from {ck.folder.name} (step {ck.global_step}{total}): "
                        f"optimizer.pt, scheduler.pt; {steps} more steps")
    else:
        out["start"] = f"fresh: {_describe_optimizer(opt, cfg)}; {steps} steps"
    out["compared in"] = (f"the {form_a} form (A) and the {form_b} form (B)" if form_a != form_b
                          else f"the {form_a} form"
                          + (": stored tensors w = W/m, multipliers in the forward, optimizer in "
                             "the gauge's stored units" if form_a == MATERIALIZED else ""))
    return out


def _apply_control(kind: str | None, gauged: tuple[Any, Any], opts: list[Any],
                   starts: list[Any]) -> dict[str, Any] | None:
    """Break one rule on side B (on A when B has nothing to break); what was done."""
    if kind is None:
        return None
    if kind == "multiplier":
        for i in (1, 0):
            if multiplier_candidate(gauged[i]) is not None:
                dropped = drop_multiplier(gauged[i])
                return {"kind": kind, "side": "AB"[i], **dropped,
                        "what": f"side {'AB'[i]} uses {dropped['tensor']} without its multiplier "
                                f"{dropped['multiplier']:.4g} in the forward"}
        raise GaugeError("--negative-control multiplier: neither side carries a multiplier other "
                         "than 1 (both STP, or the plain form): train in the materialized form of "
                         "a gauge such as muP")
    for i in (1, 0):
        factors = starts[i].scales_to(gauged[i].applied)
        if any(s != 1.0 for s in factors.values()):
            rule = gauged[i].rule_for(opts[i])
            changed = leave_eps_unmoved(opts[i], rule, factors)
            return {"kind": kind, "side": "AB"[i], "groups": changed,
                    "what": f"side {'AB'[i]}'s Adam eps left in the units its optimizer started "
                            f"in ({changed} group(s)): the eps rule of the conversion left out"}
    raise GaugeError("--negative-control eps: neither side's optimizer moved into other units "
                     "(both train in STP units): there is no eps rule to leave out; train in the "
                     "materialized form of a gauge such as muP")
