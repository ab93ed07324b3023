"""safetensors headers: strict parsing (every field type-checked) and writing.

A safetensors file is an 8-byte little-endian header length, a JSON header (dtype, shape and
byte range of every tensor, plus optional ``__metadata__``) and the raw bytes. A gauge change
keeps every dtype and shape, so the output header of a safetensors SRC is its input header
byte for byte; a ``pytorch_model.bin`` SRC gets a header written here. The parser accepts
exactly what the format allows and names the file and the field of anything else, so that a
malformed file is an error before anything is written, never a traceback.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GaugeError

__all__ = ["TensorEntry", "Header", "read_header", "header_bytes", "DTYPES", "SCALABLE",
           "CheckpointError"]


class CheckpointError(GaugeError):
    """A corrupt, truncated, mismatched or unsafe checkpoint."""


# safetensors dtype -> bytes per entry
DTYPES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
SCALABLE = ("F64", "F32", "F16", "BF16")
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


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _parse_entry(where: str, name: str, info: Any, base: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: tensor {name!r} is a {type(info).__name__}, not an object")
    missing = {"dtype", "shape", "data_offsets"} - set(info)
    if missing:
        raise CheckpointError(f"{where}: tensor {name!r} lacks {sorted(missing)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: tensor {name!r} has dtype {dtype!r}, not one of "
                              f"{sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise CheckpointError(f"{where}: tensor {name!r} has shape {shape!r}, not a list of "
                              "non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CheckpointError(f"{where}: tensor {name!r} has data_offsets {offsets!r}, not two "
                              "non-negative integers")
    a, b = offsets
    entry = TensorEntry(name, dtype, tuple(shape), base + a, base + b)
    need = entry.numel * DTYPES[dtype]
    if b < a or b - a != need:
        raise CheckpointError(
            f"{where}: the header lies about {name!r}: {dtype} {list(shape)} needs {need} bytes, "
            f"its range holds {b - a}"
        )
    return entry


def read_header(path: str | Path) -> Header:
    """Parse and validate a safetensors header against the file's actual size."""
    path = Path(path)
    where = path.name
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CheckpointError(f"missing shard {path.name} (looked in {path.parent})") from None
    try:
        size = os.fstat(fd).st_size
        prefix = os.pread(fd, 8, 0)
        if len(prefix) < 8:
            raise CheckpointError(f"{where} is truncated: {size} bytes, no header")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{where}: header claims {n} bytes, the file has {size}")
        raw_json = os.pread(fd, n, 8)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw_json.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{where}: the header is not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: the header is nested too deeply to be a header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: the header is a {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings, not "
                              f"{str(metadata)[:80]}")
    base = 8 + n
    entries = sorted((_parse_entry(where, k, v, base) for k, v in header.items()),
                     key=lambda e: (e.start, e.end))
    cursor = base
    for e in entries:
        if e.start != cursor:
            raise CheckpointError(f"{where}: tensor {e.name!r} overlaps or leaves a gap")
        cursor = e.end
    if cursor != size:
        raise CheckpointError(
            f"{where} is truncated or padded: the header describes {cursor} bytes, the file "
            f"has {size}"
        )
    return Header(path, prefix + raw_json, entries, metadata, size)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def header_bytes(tensors: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> tuple[bytes, list[TensorEntry]]:
    """A safetensors header for (name, dtype, shape) laid out in that order.

    Returns the header (length prefix, JSON padded with spaces to 8 bytes) and the entries
    with their absolute byte ranges.
    """
    body: dict[str, Any] = {}
    if metadata is not None:
        body["__metadata__"] = metadata
    offset, layout = 0, []
    for name, dtype, shape in tensors:
        n = DTYPES[dtype]
        for d in shape:
            n *= d
        body[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        layout.append((name, dtype, tuple(shape), offset, offset + n))
        offset += n
    text = json.dumps(body, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    base = 8 + len(text)
    entries = [TensorEntry(nm, dt, sh, base + a, base + b) for nm, dt, sh, a, b in layout]
    return struct.pack("<Q", len(text)) + text, entries
