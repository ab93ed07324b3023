"""Streaming rescaling of safetensors files, tensor by tensor, without decoding unscaled ones.

A safetensors file is an 8-byte little-endian header length, a JSON header (dtype, shape and
byte range of every tensor, plus optional ``__metadata__``) and the raw bytes. A gauge change
keeps every dtype and shape, so the output header is the input header byte for byte (metadata
kept) and every tensor keeps its byte range: unscaled tensors are copied as raw bytes, scaled
ones are decoded in chunks of at most 2**20 entries (reused buffers), multiplied in float64 and
rounded once to their dtype (directly for powers of two, where that is exact) and written. Peak
memory is a few chunk buffers, whatever the model's size.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GaugeError
from ..tensor_ops import is_power_of_two

__all__ = ["TensorEntry", "read_header", "rescale_file", "DTYPES", "CheckpointError"]


class CheckpointError(GaugeError):
    """A corrupt, truncated or mismatched checkpoint."""


DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1), "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}
SCALABLE = ("F64", "F32", "F16", "BF16")
CHUNK = 1 << 20
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Header:
    path: Path
    raw: bytes  # length prefix + JSON, copied verbatim to the output
    entries: list[TensorEntry]
    metadata: dict[str, str] | None
    size: int


def read_header(path: str | Path) -> Header:
    """Parse and validate a safetensors header against the file's actual size."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing shard {path.name} (looked in {path.parent})")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name} is truncated: {size} bytes, no header")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path.name}: header claims {n} bytes, the file has {size}")
        raw_json = f.read(n)
    try:
        header = json.loads(raw_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path.name}: the header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    base = 8 + n
    entries = []
    for name, info in header.items():
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: malformed header entry for {name!r}") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
        entry = TensorEntry(name, dtype, shape, base + a, base + b)
        if b < a or entry.end - entry.start != entry.numel * DTYPES[dtype][1]:
            raise CheckpointError(
                f"{path.name}: the header lies about {name!r}: {dtype} {list(shape)} needs "
                f"{entry.numel * DTYPES[dtype][1]} bytes, its range holds {b - a}"
            )
        entries.append(entry)
    entries.sort(key=lambda e: e.start)
    cursor = base
    for e in entries:
        if e.start != cursor:
            raise CheckpointError(f"{path.name}: tensor {e.name!r} overlaps or leaves a gap")
        cursor = e.end
    if cursor != size:
        raise CheckpointError(
            f"{path.name} is truncated or padded: the header describes {cursor} bytes, the file "
            f"has {size}"
        )
    return Header(path, prefix + raw_json, entries, metadata, size)


def rescale_file(
    header: Header,
    factors: Mapping[str, float],
    out_path: Path,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, float]:
    """Write header.path to out_path with tensor t multiplied by factors.get(t, 1).

    Returns, per scaled tensor, the largest relative round-trip error |y/f - x| / max|x|.
    """
    errors: dict[str, float] = {}
    with open(header.path, "rb") as fin, open(out_path, "wb") as fout:
        fout.write(header.raw)
        progress(len(header.raw))
        if header.size == len(header.raw):
            return errors
        buffers = _Buffers()
        with mmap.mmap(fin.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for e in header.entries:
                    f = float(factors.get(e.name, 1.0))
                    if f == 1.0:
                        _copy_raw(view, e, fout, progress)
                    else:
                        errors[e.name] = _scale_entry(view, e, f, fout, progress, buffers)
                    _release(mm, e.end)
            finally:
                view.release()
        fout.flush()
        os.fsync(fout.fileno())
    return errors


def _release(mm: mmap.mmap, upto: int) -> None:
    """Drop the mapped pages already consumed, so resident memory stays at a chunk or so.

    The pages are clean and file-backed: the kernel keeps them in its page cache, the process
    just stops holding them (without this, RSS grows to the size of the file).
    """
    if hasattr(mmap, "MADV_DONTNEED"):
        end = upto - upto % mmap.PAGESIZE
        if end > 0:
            mm.madvise(mmap.MADV_DONTNEED, 0, end)


def _copy_raw(view: memoryview, e: TensorEntry, fout, progress) -> None:
    step = CHUNK * 4
    for a in range(e.start, e.end, step):
        b = min(a + step, e.end)
        fout.write(view[a:b])
        progress(b - a)


class _Buffers:
    """Chunk buffers reused across tensors: a float64 work area and one per output dtype."""

    def __init__(self) -> None:
        self.work = torch.empty(CHUNK, dtype=torch.float64)
        self.out: dict[torch.dtype, torch.Tensor] = {}

    def output(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self.out:
            self.out[dtype] = torch.empty(CHUNK, dtype=dtype)
        return self.out[dtype]


def _scale_entry(view, e: TensorEntry, factor: float, fout, progress, buffers: _Buffers) -> float:
    if e.dtype not in SCALABLE:
        raise CheckpointError(f"tensor {e.name!r} has dtype {e.dtype}, which cannot be rescaled")
    dtype, width = DTYPES[e.dtype]
    exact = is_power_of_two(factor)
    worst, scale = 0.0, 0.0
    step = CHUNK * width
    for a in range(e.start, e.end, step):
        b = min(a + step, e.end)
        with warnings.catch_warnings():  # the mmap is read-only; x is only read
            warnings.simplefilter("ignore", UserWarning)
            x = torch.frombuffer(view[a:b], dtype=dtype)
        n = x.numel()
        work, y = buffers.work[:n], buffers.output(dtype)[:n]
        if exact:  # scaling by 2**k commutes with rounding: no need to go through float64
            torch.mul(x, factor, out=y)
        else:
            work.copy_(x).mul_(factor)
            y.copy_(work)
            work.copy_(y).div_(factor).sub_(x)
            worst = max(worst, work.abs().max().item())
            scale = max(scale, x.abs().max().item())
        fout.write((y.view(torch.int16) if dtype == torch.bfloat16 else y).numpy())
        progress(b - a)
        del x
    return worst / scale if scale > 0 else 0.0
