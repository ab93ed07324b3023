"""Convert a save_pretrained folder or a Trainer checkpoint folder to another gauge, on disk.

SRC is never modified. DST is assembled in a hidden temporary folder beside it
(``.DST.gaugeconv-tmp-PID``), verified (every output header re-read and compared with its input:
names, dtypes, shapes, byte ranges, count), and renamed into place only then. Everything that can
be checked is checked before the first byte is written; a failure removes the temporary folder;
a process killed halfway leaves only that hidden folder, which the next conversion to the same
DST removes. An existing DST is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import GaugeError
from ..gauges import Custom, resolve_point
from ..hf.config import CONFIG_KEY, GaugeConfig
from ..hf.inspect import meta_model
from ..hf.model import gauge_entry, gauge_of, get_gauged, weights_are_effective
from ..optim_rules import OptimizerRule
from ..tensor_ops import is_power_of_two
from .optimizer_files import convert_optimizer_state, convert_scheduler_state, load_trusted
from .safetensors_io import SCALABLE, CheckpointError, Header, read_header, rescale_file

__all__ = ["convert_checkpoint", "ConvertReport"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _shard_files(src: Path) -> tuple[list[Path], dict[str, str] | None]:
    if (src / INDEX).is_file():
        try:
            index = json.loads((src / INDEX).read_text())
            weight_map = dict(index["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{INDEX} is not a valid index ({err})") from None
        files = list(dict.fromkeys(weight_map.values()))
        return [src / f for f in files], weight_map
    if (src / SINGLE).is_file():
        return [src / SINGLE], None
    if any((src / n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise CheckpointError(
            f"{src} holds pickled pytorch_model.bin weights; re-save with safetensors "
            "(save_pretrained(safe_serialization=True)) to convert them"
        )
    raise CheckpointError(f"{src} has no {SINGLE} nor {INDEX}")


def _check_tensors(headers: list[Header], weight_map, model) -> dict[str, Any]:
    """File contents against the index and against the model built from config.json."""
    where: dict[str, str] = {}
    entries = {}
    for h in headers:
        for e in h.entries:
            if e.name in where:
                raise CheckpointError(f"tensor {e.name!r} is in both {where[e.name]} and {h.path.name}")
            where[e.name] = h.path.name
            entries[e.name] = e
    if weight_map is not None:
        for key, fname in weight_map.items():
            if where.get(key) != fname:
                raise CheckpointError(
                    f"{INDEX} puts {key!r} in {fname}, but "
                    + (f"it is in {where[key]}" if key in where else "no shard holds it")
                )
        extra = sorted(set(where) - set(weight_map))
        if extra:
            raise CheckpointError(f"shards hold tensors the index does not list: {extra[:4]}")
    gauged = get_gauged(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    known = set(params) | set(model.state_dict())
    unknown = sorted(set(entries) - known)
    if unknown:
        raise CheckpointError(
            f"the weights do not fit config.json's {type(model).__name__}: "
            f"{len(unknown)} unknown tensor(s) {unknown[:4]}"
        )
    uses_of: dict[str, list[str]] = {}
    for use, stored in gauged.uses.items():
        uses_of.setdefault(stored, []).append(use)
    for stored in gauged.plans:
        present = [u for u in uses_of[stored] if u in entries]
        if not present:
            raise CheckpointError(f"the checkpoint lacks tensor {stored!r}")
        for u in present:
            if entries[u].shape != tuple(params[u].shape):
                raise CheckpointError(
                    f"{u!r} has shape {list(entries[u].shape)} in {where[u]}, but config.json's "
                    f"model gives {list(params[u].shape)}: config and weights disagree"
                )
    return entries


def _target(src_cfg: GaugeConfig, to: str, snap: bool, param) -> tuple[GaugeConfig, Any]:
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


def _clean_stale(dst: Path) -> None:
    for old in dst.parent.glob(f".{dst.name}.gaugeconv-tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass


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
    optimizer_rule: OptimizerRule | None = None,
) -> ConvertReport:
    """Convert a saved model or Trainer checkpoint folder to gauge ``to``; see the module doc."""
    start = time.perf_counter()
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise GaugeError(f"SRC {src} is not a folder")
    if dst == src or src in dst.parents:
        raise GaugeError(f"DST {dst} must lie outside SRC {src}")
    if dst.exists() and not overwrite:
        raise GaugeError(f"DST {dst} already exists; pass overwrite (--overwrite) to replace it")

    # 1. plan: source gauge, target gauge, per-tensor factors
    plain = GaugeConfig(richness=richness, gauge="stp", gamma=gamma, optimizer=optimizer,
                        tied_role=tied_role) if richness is not None else None
    model = meta_model(src, plain)
    src_cfg = GaugeConfig.from_dict(getattr(model.config, CONFIG_KEY))
    if richness is not None and richness != src_cfg.richness:
        raise GaugeError(
            f"the checkpoint is at r={src_cfg.richness}; r={richness} was given: a gauge change "
            "keeps the richness fixed"
        )
    gauged = get_gauged(model)
    dst_cfg, target = _target(src_cfg, to, snap_pow2, gauged.parameterization)
    scales = gauged.parameterization.scales_to(target)
    files, weight_map = _shard_files(src)
    headers = [read_header(f) for f in files]
    entries = _check_tensors(headers, weight_map, model)
    # format-2 folders (save_pretrained of a gauged model) hold effective tensors: only the
    # gauge entry and the optimizer state move; format 1 holds the stored tensors of the gauge
    src_entry = json.loads((src / "config.json").read_text()).get(CONFIG_KEY)
    effective = bool(src_entry) and weights_are_effective(src_entry)
    factors = {u: 1.0 if effective else 1.0 / scales[s]
               for u, s in gauged.uses.items() if u in entries}
    for name, f in factors.items():
        if f != 1.0 and entries[name].dtype not in SCALABLE:
            raise CheckpointError(f"tensor {name!r} ({entries[name].dtype}) cannot be rescaled")
    inexact = sorted(n for n, f in factors.items() if f != 1.0 and not is_power_of_two(f))
    if exact and inexact:
        raise GaugeError(
            f"--exact: {len(inexact)} tensor(s) would be scaled by factors that are not powers of "
            f"two, which cannot be lossless: {inexact[:6]}{' ...' if len(inexact) > 6 else ''}; "
            "use --snap-pow2 for the nearest gauge whose factors are powers of two"
        )
    opt_state = sched_state = None
    if (src / "optimizer.pt").is_file():
        opt_state, group_scales, rule = convert_optimizer_state(
            load_trusted(src / "optimizer.pt"), scales, optimizer_rule
        )
        if (src / "scheduler.pt").is_file():
            sched_state = convert_scheduler_state(
                load_trusted(src / "scheduler.pt"), group_scales, rule.degree
            )
    new_config = json.loads((src / "config.json").read_text())
    new_config[CONFIG_KEY] = gauge_entry(dst_cfg, target, effective_weights=effective)

    # 2. write beside DST, verify, rename into place
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dst)
    tmp = dst.parent / f".{dst.name}.gaugeconv-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    errors: dict[str, float] = {}
    try:
        special = {f.name for f in files} | {"config.json", "optimizer.pt", "scheduler.pt"}
        for item in src.iterdir():
            if item.name in special:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        total = sum(h.size for h in headers)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc="convert", leave=False)
        for h in headers:
            errors.update(rescale_file(h, factors, tmp / h.path.name,
                                       bar.update if bar else (lambda n: None)))
        if bar:
            bar.close()
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        if opt_state is not None:
            torch.save(opt_state, tmp / "optimizer.pt")
        if sched_state is not None:
            torch.save(sched_state, tmp / "scheduler.pt")
        _verify(headers, tmp)
        if dst.exists():
            old = dst.parent / f".{dst.name}.gaugeconv-old-{os.getpid()}"
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    scaled = sum(1 for f in factors.values() if f != 1.0)
    return ConvertReport(
        src=str(src), dst=str(dst), model=type(model).__name__,
        from_gauge=_brief(src_cfg), to_gauge=_brief(dst_cfg),
        shards=len(headers), tensors=len(entries), scaled=scaled,
        copied_raw=len(entries) - scaled, bytes=total,
        max_roundtrip_rel_error=max(errors.values(), default=0.0), lossless=not inexact,
        optimizer=opt_state is not None, scheduler=sched_state is not None,
        seconds=time.perf_counter() - start, snapped_to_powers_of_two=snap_pow2,
        not_power_of_two=inexact,
    )


def _brief(cfg: GaugeConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k != "multipliers"}


def _verify(headers: list[Header], out_dir: Path) -> None:
    """Re-open every output file: same tensors, dtypes, shapes, byte ranges and sizes."""
    from safetensors import safe_open

    for h in headers:
        out = read_header(out_dir / h.path.name)
        if out.entries != h.entries or out.metadata != h.metadata or out.size != h.size:
            raise CheckpointError(f"verification failed for {h.path.name}: the output differs")
        with safe_open(out_dir / h.path.name, framework="pt") as f:
            if sorted(f.keys()) != sorted(e.name for e in h.entries):
                raise CheckpointError(f"verification failed for {h.path.name}: tensor names")
            for e in h.entries:
                if tuple(f.get_slice(e.name).get_shape()) != e.shape:
                    raise CheckpointError(f"verification failed for {e.name}: shape")
