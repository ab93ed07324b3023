"""Convert a save_pretrained folder or a Trainer checkpoint folder to another gauge, on disk.

What DST's weights hold (``weights=``, the config.json entry's ``format_version``):

* ``"effective"`` (the default, format 2): the effective tensors m*w, which a plain loader
  (``AutoModel*.from_pretrained``, vLLM) reads as the same function as SRC; the entry only says
  which gauge ``gaugeconv.hf.from_pretrained`` puts them back in (THEORY.md section 6: the
  function depends on m*w alone). From a plain or format-2 SRC the weights are copied as raw
  bytes; from a format-1 SRC each tensor is scaled by its source multiplier m_src.
* ``"stored"`` (format 1): the stored tensors of the target gauge, each scaled by
  (m_src for a format-1 SRC, else 1) / m_target. A plain loader reads such a folder as a
  DIFFERENT function; only gaugeconv restores it.

Trainer files (optimizer.pt, scheduler.pt) hold the optimizer state in the units the model's
form trains in (``form`` in the entry, ``gaugeconv.forms``): a plain-form model's optimizer is
the STP gauge's (m = 1, effective units), a materialized one's is in the stored units of its
gauge (an entry written before forms existed reads as materialized). They are converted by
s = m_target / m_src with m = 1 on a plain side (section 4), whichever format the weights have.
DST's form: ``form=`` ("plain" by default; ``weights="stored"`` is the materialized form).

Order of work (every check before the first byte is written; the hidden folder is created
only when all of them passed):

1. paths: DST's parents, DST itself, SRC's tree (placement.py, sources.py) -- SRC and DST
   compared by device and inode; debris of killed conversions to DST swept;
2. plan: config.json read as JSON (no code from SRC ever runs; hf/inspect.py), the model built
   on the meta device, every weight header parsed strictly, every tensor matched to the model
   the way ``from_pretrained`` matches it (base-model prefix added or removed; keys that it
   ignores on load, such as old ``position_ids`` or GPT-2's ``attn.bias`` buffers, copied
   through unchanged and reported), the per-tensor factor 1/s of THEORY.md section 6,
   optimizer.pt and scheduler.pt converted in memory;
3. write: the hidden folder is filled by the streaming engine (stream.py) -- precision losses
   (overflow, underflow) stop it unless ``allow_lossy`` --, every output header re-read and
   compared, and the folder renamed into place (placement.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GaugeError
from ..tensor_ops import is_power_of_two
from .placement import (
    check_not_nested,
    claim,
    destination_path,
    place,
    release,
    resolve_destination,
    sweep,
    unmake,
)
from .safetensors_io import SCALABLE, CheckpointError, Header, header_bytes, read_header
from .scaling import FORMATS
from .sources import Weights, check_trainer_files, find_weights, walk_src
from .stream import ArraySource, FileSource, OutFile, Task, run_stream

__all__ = ["convert_checkpoint", "ConvertReport", "WEIGHTS"]

CONFIG_KEY = "gaugeconv"
WEIGHTS = ("effective", "stored")  # what DST's weights hold: format_version 2, 1


@dataclass
class ConvertReport:
    src: str
    dst: str
    model: str
    from_gauge: dict[str, Any]
    to_gauge: dict[str, Any]
    shards: int
    tensors: int
    scaled: int
    copied_raw: int
    bytes: int
    max_roundtrip_rel_error: float
    lossless: bool
    optimizer: bool
    scheduler: bool
    seconds: float
    snapped_to_powers_of_two: bool = False
    not_power_of_two: list[str] = field(default_factory=list)
    source_format: str = "safetensors"
    ignored: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    lossy: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    optimizer_lossy: list[str] = field(default_factory=list)
    seconds_planning: float = 0.0  # checks and plan, imports of torch and transformers included
    seconds_writing: float = 0.0  # from the hidden folder's creation to DST in place
    weights: str = "effective"  # DST holds effective tensors (format 2) or stored ones (1)
    source_weights: str = "effective"  # SRC's: plain and format 2 "effective", format 1 "stored"
    form: str = "plain"  # DST's form: its optimizer.pt is in STP units (plain) or the gauge's
    source_form: str = "plain"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str


def _target(src_cfg, to: str, snap: bool, param):
    from ..gauges import Custom, resolve_point
    from ..hf.model import gauge_of

    gauge, r = resolve_point(to, src_cfg.richness)
    if r != src_cfg.richness:
        raise GaugeError(f"{to!r} is at r={r}, the checkpoint at r={src_cfg.richness}")
    cfg = src_cfg.replace(gauge=gauge.name, multipliers=None)
    target = param.with_gauge(gauge_of(cfg))
    if snap:
        m0, m1 = param.multipliers, target.multipliers
        snapped = {n: m0[n] * 2.0 ** round(math.log2(m1[n] / m0[n])) for n in m0}
        target = param.with_gauge(Custom(snapped))
        cfg = src_cfg.replace(gauge="custom", multipliers=target.multipliers)
    return cfg, target


# buffers that old transformers saved and today's from_pretrained drops (with a warning)
LEGACY_BUFFERS = (r"(^|\.)attn\.masked_bias$",)


def _ignore_regex(model) -> re.Pattern | None:
    """The unexpected keys from_pretrained drops silently (modeling_utils'
    ``_adjust_missing_and_unexpected_keys``): the class's patterns, old rotary ``inv_freq`` and
    ``position_ids`` buffers; and GPT-2's old ``attn.masked_bias``."""
    patterns = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    patterns.update(LEGACY_BUFFERS)
    buffers = [n for n, _ in model.named_buffers()]
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        patterns.add(r"(^|\.)position_ids$")
    return re.compile("|".join(f"({p})" for p in sorted(patterns))) if patterns else None


def _match(tensors: dict[str, _Tensor], model) -> tuple[dict[str, str], list[str]]:
    """Checkpoint key -> model key, as from_pretrained matches them; and the ignored keys."""
    params = dict(model.named_parameters(remove_duplicate=False))
    known = set(params) | set(model.state_dict())
    buffers = {n for n, _ in model.named_buffers(remove_duplicate=False)} - known
    prefix = getattr(model, "base_model_prefix", "") or ""
    regex = _ignore_regex(model)
    matched: dict[str, str] = {}
    owner: dict[str, str] = {}
    ignored, unknown = [], []
    for key in tensors:
        candidates = [key]
        if prefix:
            candidates.append(f"{prefix}.{key}")
            if key.startswith(prefix + "."):
                candidates.append(key[len(prefix) + 1:])
        hit = next((c for c in candidates if c in known), None)
        if hit is None:
            if any(c in buffers for c in candidates) or (regex and regex.search(key)):
                ignored.append(key)
            else:
                unknown.append(key)
            continue
        if hit in owner:
            raise CheckpointError(f"tensors {owner[hit]!r} and {key!r} are both the model's "
                                  f"{hit!r}: which one is it?")
        owner[hit] = key
        matched[key] = hit
    if unknown:
        raise CheckpointError(
            f"the weights do not fit config.json's {type(model).__name__}: {len(unknown)} "
            f"unknown tensor(s) {sorted(unknown)[:4]}"
        )
    return matched, sorted(ignored)


def _check_against_model(tensors: dict[str, _Tensor], matched: dict[str, str], gauged,
                         model) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    present = {m: k for k, m in matched.items()}
    uses_of: dict[str, list[str]] = {}
    for use, stored in gauged.uses.items():
        uses_of.setdefault(stored, []).append(use)
    for stored in gauged.plans:
        here = [u for u in uses_of[stored] if u in present]
        if not here:
            raise CheckpointError(f"the checkpoint lacks tensor {stored!r}")
        for u in here:
            t = tensors[present[u]]
            if t.shape != tuple(params[u].shape):
                raise CheckpointError(
                    f"{t.name!r} has shape {list(t.shape)} in {t.file}, but config.json's "
                    f"model gives {list(params[u].shape)}: config and weights disagree"
                )


def _safetensors_plan(src: Path, weights: Weights) -> tuple[list[Header], dict[str, _Tensor]]:
    headers = [read_header(src / f) for f in weights.files]
    tensors: dict[str, _Tensor] = {}
    for h in headers:
        for e in h.entries:
            if e.name in tensors:
                raise CheckpointError(f"tensor {e.name!r} is in both {tensors[e.name].file} and "
                                      f"{h.path.name}")
            tensors[e.name] = _Tensor(e.name, e.dtype, e.shape, h.path.name)
    if weights.weight_map is not None:
        _check_index(tensors, weights)
    return headers, tensors


def _check_index(tensors: dict[str, _Tensor], weights: Weights) -> None:
    for key, fname in weights.weight_map.items():
        where = tensors[key].file if key in tensors else None
        if where != fname:
            raise CheckpointError(f"{weights.index} puts {key!r} in {fname}, but "
                                  + (f"it is in {where}" if where else "no shard holds it"))
    extra = sorted(set(tensors) - set(weights.weight_map))
    if extra:
        raise CheckpointError(f"shards hold tensors the index does not list: {extra[:4]}")


def _bin_plan(src: Path, weights: Weights) -> tuple[dict[str, dict], dict[str, _Tensor]]:
    import torch

    from .optimizer_files import load_trusted

    codes = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
             torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
    states, tensors = {}, {}
    for f in weights.files:
        try:
            state = load_trusted(src / f, mmap=True)  # pages stay in the page cache
        except CheckpointError:  # the legacy (pre-zip) format cannot be memory-mapped
            state = load_trusted(src / f)
        if not isinstance(state, dict):
            raise CheckpointError(f"{f} holds a {type(state).__name__}, not a state dict")
        for key, t in state.items():
            if not isinstance(key, str) or not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{f}: entry {key!r} is not a named tensor")
            if t.dtype not in codes:
                raise CheckpointError(f"{f}: tensor {key!r} has dtype {t.dtype}, which "
                                      "safetensors cannot hold here")
            if key in tensors:
                raise CheckpointError(f"tensor {key!r} is in both {tensors[key].file} and {f}")
            tensors[key] = _Tensor(key, codes[t.dtype], tuple(t.shape), f)
        states[f] = state
    if weights.weight_map is not None:
        _check_index(tensors, weights)
    return states, tensors


def _tasks_from_header(h: Header, factors: dict[str, float], source: FileSource) -> list[Task]:
    tasks: list[Task] = []
    for e in h.entries:
        if e.end == e.start:
            continue
        f = factors.get(e.name, 1.0)
        if f == 1.0:
            last = tasks[-1] if tasks else None
            if last is not None and last.dtype is None and \
                    last.src_offset + last.nbytes == e.start:
                last.nbytes += e.end - e.start
            else:
                tasks.append(Task(source, e.start, e.start, e.end - e.start, e.name))
        else:
            tasks.append(Task(source, e.start, e.start, e.end - e.start, e.name, e.dtype, f))
    return tasks


def _bin_outfile(state: dict, tensors: dict[str, _Tensor], factors: dict[str, float],
                 path: Path) -> OutFile:
    import torch

    names = list(state)
    header, entries = header_bytes([(n, tensors[n].dtype, tensors[n].shape) for n in names],
                                   {"format": "pt"})
    out = OutFile(path, header, entries[-1].end if entries else len(header))
    for n, e in zip(names, entries):
        if e.end == e.start:
            continue
        data = state[n].detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        f = factors.get(n, 1.0)
        out.tasks.append(Task(ArraySource(n, data), 0, e.start, e.end - e.start, n,
                              None if f == 1.0 else tensors[n].dtype, f))
    return out


def _check_multipliers(m_dst: dict[str, float], matched: dict[str, str], uses: dict[str, str],
                       tensors: dict[str, _Tensor]) -> None:
    """Every target multiplier m, and 1/m, a normal number where the forward computes m * w
    (float32 for float16/bfloat16/float32 tensors, float64 for float64 ones): else the gauge
    cannot hold the tensor (m = 1e300 is inf in float32, and W/m underflows to zero), and
    ``gh.from_pretrained`` would compute another function."""
    wide = {uses[m]: tensors[k].dtype == "F64" for k, m in matched.items() if m in uses}
    for name, m in sorted(m_dst.items()):
        if not (math.isfinite(m) and m > 0):
            raise CheckpointError(f"the target gauge's multiplier of {name!r} is {m!r}, not a "
                                  "finite positive number")
        fmt = FORMATS["F64" if wide.get(name) else "F32"]
        top = float(np.finfo(fmt.native).max)
        if not (fmt.tiny <= m <= top and fmt.tiny <= 1.0 / m <= top):
            raise CheckpointError(
                f"the target gauge's multiplier of {name!r} is {m!r}, outside the normal range "
                f"of {'float64' if wide.get(name) else 'float32'} (it or its inverse): the "
                "gauge cannot hold this tensor (check --gamma)")


def _applied(param, form: str):
    from ..model import _applied as applied

    return applied(param, form)


def _brief(cfg) -> dict[str, Any]:
    # format_version is the report's weights / source_weights, not a property of the gauge
    return {k: v for k, v in cfg.to_dict().items() if k not in ("multipliers", "format_version")}


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    to: str,
    richness: float | None = None,
    gamma: float = 1.0,
    optimizer: str = "adam",
    tied_role: str = "readout",
    exact: bool = False,
    snap_pow2: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    optimizer_rule: Any = None,
    allow_lossy: bool = False,
    workers: int | None = None,
    allow_unusual_roles: bool = False,
    weights: str = "effective",
    form: str | None = None,
) -> ConvertReport:
    """Convert a saved model or Trainer checkpoint folder to gauge ``to``; see the module doc.

    ``weights="effective"`` writes a plain checkpoint of SRC's function (format 2);
    ``weights="stored"`` the stored tensors of the target gauge (format 1), which plain loaders
    read as a different function.
    """
    from ..forms import MATERIALIZED, PLAIN, check_form

    start = time.perf_counter()
    if weights not in WEIGHTS:
        raise GaugeError(f"weights={weights!r}: give 'effective' or 'stored'")
    form = check_form(form or (MATERIALIZED if weights == "stored" else PLAIN))
    if weights == "stored" and form == PLAIN:
        raise GaugeError("stored tensors (--stored) are the materialized form: the plain form's "
                         "Parameters hold effective tensors")
    # 1. paths
    try:
        os.stat(src)
    except OSError as err:
        raise CheckpointError(f"SRC {src}: {err.strerror}") from None
    if not os.path.isdir(src):
        raise CheckpointError(f"SRC {src} is not a folder")
    src_path = Path(os.path.realpath(src))
    dst_guess = destination_path(dst)
    notes = sweep(dst_guess)
    dest = resolve_destination(dst, overwrite)
    tree = walk_src(src_path)
    check_not_nested(src_path, tree.dir_ids, dest)
    layout = find_weights(src_path, tree)
    top_dirs = [d for d in tree.dirs if "/" not in d]
    has_opt, has_sched = check_trainer_files(src_path, top_dirs)

    # 2. plan
    from ..hf.config import GaugeConfig
    from ..hf.inspect import meta_model, read_config
    from ..hf.model import gauge_entry, get_gauged, weights_are_effective

    plain = GaugeConfig(richness=richness, gauge="stp", gamma=gamma, optimizer=optimizer,
                        tied_role=tied_role, allow_unusual_roles=allow_unusual_roles,
                        ) if richness is not None else None
    raw_config = read_config(src_path)
    model = meta_model(src_path, plain)
    src_cfg = GaugeConfig.from_dict(getattr(model.config, CONFIG_KEY))
    if richness is not None and richness != src_cfg.richness:
        raise GaugeError(
            f"the checkpoint is at r={src_cfg.richness}; r={richness} was given: a gauge change "
            "keeps the richness fixed"
        )
    gauged = get_gauged(model)
    dst_cfg, target = _target(src_cfg, to, snap_pow2, gauged.parameterization)
    dst_cfg = dst_cfg.replace(form=form)
    scales = gauged.parameterization.scales_to(target)
    # the optimizer state moves between the units each side trains in (m = 1 in plain form)
    opt_scales = _applied(gauged.parameterization, src_cfg.form).scales_to(
        _applied(target, form))
    if layout.kind == "safetensors":
        headers, tensors = _safetensors_plan(src_path, layout)
        states = None
    else:
        headers, (states, tensors) = None, _bin_plan(src_path, layout)
    matched, ignored = _match(tensors, model)
    _check_against_model(tensors, matched, gauged, model)
    # what SRC holds: effective tensors (a plain folder, format 2) or the stored tensors of its
    # gauge (format 1); the factor per tensor takes them to what DST holds (module doc)
    entry = raw_config.get(CONFIG_KEY)
    src_stored = bool(entry) and not weights_are_effective(entry)
    m_src = gauged.parameterization.multipliers
    m_dst = target.multipliers
    _check_multipliers(m_dst, matched, gauged.uses, tensors)
    factors = {}
    for key, m in matched.items():
        if m not in gauged.uses:
            continue
        name = gauged.uses[m]
        if weights == "effective":
            f = m_src[name] if src_stored else 1.0
        else:
            f = 1.0 / scales[name] if src_stored else 1.0 / m_dst[name]
        if not (math.isfinite(f) and f > 0):
            raise CheckpointError(f"tensor {key!r} would be scaled by {f!r}: the gauge's "
                                  "multipliers are not finite positive numbers")
        if f != 1.0:
            factors[key] = f
    for name in factors:
        if tensors[name].dtype not in SCALABLE:
            raise CheckpointError(f"tensor {name!r} ({tensors[name].dtype}) cannot be rescaled")
    inexact = sorted(n for n, f in factors.items() if not is_power_of_two(f))
    if has_opt:  # the optimizer state moves by s = m_target / m_src whatever the weights do
        inexact += sorted(f"optimizer.pt state of {n}" for n, s in opt_scales.items()
                          if not is_power_of_two(s))
    if exact and inexact:
        raise GaugeError(
            f"--exact: {len(inexact)} tensor(s) would be scaled by factors that are not powers of "
            f"two, which cannot be lossless: {inexact[:6]}{' ...' if len(inexact) > 6 else ''}; "
            "use --snap-pow2 for the nearest gauge whose factors are powers of two"
        )
    opt_bytes = sched_bytes = None
    opt_lossy: list[str] = []
    if has_opt:
        opt_bytes, sched_bytes, opt_lossy = _convert_trainer_state(src_path, opt_scales, optimizer_rule,
                                                        has_sched, allow_lossy)
    new_config = dict(raw_config)
    new_config[CONFIG_KEY] = gauge_entry(dst_cfg, target,
                                     effective_weights=weights == "effective")
    config_bytes = (json.dumps(new_config, indent=2, sort_keys=True) + "\n").encode()

    # 3. write beside DST, verify, rename into place
    planned = time.perf_counter()
    tmp, made = claim(dest)
    try:
        outs: list[OutFile] = []
        if headers is not None:
            for h in headers:
                outs.append(OutFile(tmp / h.path.name, h.raw, h.size,
                                    _tasks_from_header(h, factors, FileSource(h.path))))
        else:
            for f in layout.files:
                out = _bin_outfile(states[f], tensors, factors, tmp / layout.out_names[f])
                outs.append(out)
        skip = layout.consumed | {"config.json", "optimizer.pt", "scheduler.pt"}
        if layout.kind == "safetensors" and layout.index:
            skip.discard(layout.index)
        for d in tree.dirs:
            os.mkdir(tmp / d)
        copies = [f for f in tree.files if f not in skip]
        for f in copies:
            size = os.path.getsize(src_path / f)
            outs.append(OutFile(tmp / f, b"", size,
                                [Task(FileSource(src_path / f), 0, 0, size, f)] if size else []))
        total = sum(o.size for o in outs)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc="convert", leave=False)
        try:
            stats = run_stream(outs, workers or min(8, os.cpu_count() or 1),
                               bar.update if bar else (lambda n: None), allow_lossy)
        finally:
            if bar:
                bar.close()
        for f in copies:
            shutil.copystat(src_path / f, tmp / f)
        if layout.kind == "bin":
            _write_bin_index(tmp, layout, outs)
        _write_file(tmp / "config.json", config_bytes)
        if opt_bytes is not None:
            _write_file(tmp / "optimizer.pt", opt_bytes)
        if sched_bytes is not None:
            _write_file(tmp / "scheduler.pt", sched_bytes)
        _verify(outs[: len(layout.files)], tmp)
        old = place(tmp, dest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        release(dest)
        unmake(made)
        raise
    written = time.perf_counter()
    try:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        release(dest)  # this conversion's lock, held since claim()
    lossy = {n: {"overflow": s.overflow, "underflow": s.underflow}
             for n, s in stats.items() if s.overflow or s.underflow}
    rel = [s.roundtrip / s.amax for s in stats.values() if s.amax > 0]
    scaled = len(factors)
    return ConvertReport(
        src=str(src_path), dst=str(dest.path), model=type(model).__name__,
        from_gauge=_brief(src_cfg), to_gauge=_brief(dst_cfg),
        shards=len(layout.files), tensors=len(tensors), scaled=scaled,
        copied_raw=len(tensors) - scaled, bytes=sum(o.size for o in outs[: len(layout.files)]),
        max_roundtrip_rel_error=max(rel, default=0.0), lossless=not inexact and not lossy and not opt_lossy,
        optimizer=opt_bytes is not None, scheduler=sched_bytes is not None,
        seconds=time.perf_counter() - start, snapped_to_powers_of_two=snap_pow2,
        not_power_of_two=inexact, source_format="safetensors" if layout.kind == "safetensors"
        else "pytorch_model.bin", ignored=ignored, left_out=layout.left_out, lossy=lossy,
        notes=notes, optimizer_lossy=opt_lossy, seconds_planning=planned - start,
        seconds_writing=written - planned, weights=weights,
        source_weights="stored" if src_stored else "effective", form=form,
        source_form=src_cfg.form,
    )


def _convert_trainer_state(src: Path, scales, rule, has_sched: bool, allow_lossy: bool):
    import io

    import torch

    from .optimizer_files import convert_optimizer_state, convert_scheduler_state, load_trusted

    original = load_trusted(src / "optimizer.pt")
    opt_state, group_scales, rule = convert_optimizer_state(original, scales, rule)
    lossy = _optimizer_losses(original, opt_state)
    if lossy and not allow_lossy:
        raise CheckpointError(f"optimizer.pt {lossy[0]}; nothing was written (--allow-lossy "
                              "accepts the loss)")
    buf = io.BytesIO()
    torch.save(opt_state, buf)
    sched = None
    if has_sched:
        state = convert_scheduler_state(load_trusted(src / "scheduler.pt"), group_scales,
                                        rule.degree)
        out = io.BytesIO()
        torch.save(state, out)
        sched = out.getvalue()
    return buf.getvalue(), sched, lossy


def _optimizer_losses(before: dict, after: dict) -> list[str]:
    """State tensors whose scaling created inf/NaN from finite entries or zeros from nonzero
    ones (a bfloat16 exp_avg_sq times s**-2, say)."""
    import torch

    out = []
    for idx, st in after["state"].items():
        for key, new in st.items():
            old = before["state"][idx].get(key)
            if not (isinstance(new, torch.Tensor) and new.is_floating_point()
                    and isinstance(old, torch.Tensor) and old.shape == new.shape):
                continue
            over = int((torch.isfinite(old) & ~torch.isfinite(new)).sum())
            under = int(((old != 0) & (new == 0)).sum())
            if over or under:
                out.append(f"entry {idx} {key!r} ({new.dtype}): {over} entries would overflow, "
                           f"{under} underflow to zero")
    return out


def _write_bin_index(tmp: Path, weights: Weights, outs: list[OutFile]) -> None:
    if weights.index is None:
        return
    data = dict(weights.index_data or {})
    meta = dict(data.get("metadata") or {}) if isinstance(data.get("metadata"), dict) else {}
    meta["total_size"] = sum(o.size - len(o.header) for o in outs[: len(weights.files)])
    index = {"metadata": meta,
             "weight_map": {k: weights.out_names[f] for k, f in weights.weight_map.items()}}
    _write_file(tmp / "model.safetensors.index.json",
                (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())


def _verify(outs: list[OutFile], out_dir: Path) -> None:
    """Re-open every output weight file: the header we meant, a file of the size we meant."""
    from safetensors import safe_open

    for o in outs:
        got = read_header(o.path)
        if got.raw != o.header or got.size != o.size:
            raise CheckpointError(f"verification failed for {o.path.name}: the output differs")
        with safe_open(o.path, framework="numpy") as f:
            if sorted(f.keys()) != sorted(e.name for e in got.entries):
                raise CheckpointError(f"verification failed for {o.path.name}: tensor names")
