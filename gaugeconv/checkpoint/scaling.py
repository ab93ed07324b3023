"""Scaling a chunk of raw tensor bytes by a gauge factor, with every precision loss detected.

Numpy only (no torch): the streaming path of `gaugeconv convert` runs in worker threads, and
numpy's array loops release the GIL.

* A power-of-two factor 2**k (THEORY.md section 6: then the conversion is exact) changes only
  the exponent. Before multiplying, one integer pass over the bit patterns finds whether any
  entry leaves the normal range: for k > 0 an exponent field >= emax - k (overflow to inf),
  for k < 0 a nonzero entry with exponent field <= -k (underflow to a subnormal or to zero,
  which drops mantissa bits). Without such an entry the product is exact, bit for bit.
* Any other factor is applied in float64 and rounded once to the dtype (bfloat16 through
  float32, which rounds to nearest even); the largest relative round-trip error
  |y/f - x| / max|x| is measured for the report.
* On every path, an infinity or NaN created from a finite entry (overflow) and a result that
  lost bits below the normal range (underflow: a nonzero entry rounded to zero or, with a power
  of two, a subnormal result that is not exact; with any other factor, a normal entry that
  became subnormal) are counted: the caller refuses them unless told to accept a lossy
  conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ChunkResult", "scale_chunk", "FORMATS"]


@dataclass(frozen=True)
class _Format:
    """Bit layout of a floating-point dtype: its uint view, mantissa bits, all-ones exponent."""

    uint: type
    mantissa: int
    emax: int  # exponent field of inf/NaN
    native: type | None  # numpy float dtype (None: bfloat16, handled through float32)
    tiny: float  # smallest normal


FORMATS: dict[str, _Format] = {
    "F64": _Format(np.uint64, 52, 0x7FF, np.float64, float(np.finfo(np.float64).tiny)),
    "F32": _Format(np.uint32, 23, 0xFF, np.float32, float(np.finfo(np.float32).tiny)),
    "F16": _Format(np.uint16, 10, 0x1F, np.float16, float(np.finfo(np.float16).tiny)),
    "BF16": _Format(np.uint16, 7, 0xFF, None, float(np.finfo(np.float32).tiny)),
}


@dataclass
class ChunkResult:
    overflow: int = 0  # finite -> inf / NaN
    underflow: int = 0  # nonzero -> zero or subnormal (mantissa bits lost, or may be)
    roundtrip: float = 0.0  # max |y/f - x| over the chunk (non-powers of two)
    amax: float = 0.0  # max |x| over the chunk (non-powers of two)


def _exponent_range_is_safe(bits: np.ndarray, fmt: _Format, k: int, work: np.ndarray) -> bool:
    """True when every entry times 2**k stays exact: one and-pass, one subtract, one min."""
    absmask = fmt.uint(np.iinfo(fmt.uint).max >> 1)
    np.bitwise_and(bits, absmask, out=work)
    if k > 0:
        if k >= fmt.emax - 1:
            return False
        lo = fmt.uint((fmt.emax - k) << fmt.mantissa)  # exponent fields that overflow
        inf = fmt.uint(fmt.emax << fmt.mantissa)
        np.subtract(work, lo, out=work)  # wraps below lo: [lo, inf) -> [0, inf - lo)
        return work.size == 0 or bool(work.min() >= inf - lo)
    threshold = fmt.uint(min(1 - k, fmt.emax) << fmt.mantissa)  # (0, threshold): underflow
    np.subtract(work, fmt.uint(1), out=work)  # wraps 0 to the top
    return work.size == 0 or bool(work.min() >= threshold - fmt.uint(1))


def _bf16_to_f32(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.left_shift(bits.astype(np.uint32), 16, out=out.view(np.uint32))
    return out


def _f32_to_bf16(y: np.ndarray, out: np.ndarray) -> None:
    """Truncate float32 values that are bfloat16 values (exact results) to their top 16 bits."""
    out[...] = np.right_shift(y.view(np.uint32), 16)


def _f64_to_bf16(w: np.ndarray, out: np.ndarray) -> None:
    """Round float64 to bfloat16 once, to nearest even.

    Normal range: on the 45 dropped mantissa bits. Below 2**-126 (bfloat16's subnormals, a
    fixed quantum of 2**-133): rint of w * 2**133, exact in float64.
    """
    small = np.abs(w) < 2.0 ** -126
    if small.any():
        w = w.copy()
        w[small] = np.rint(w[small] * 2.0 ** 133) * 2.0 ** -133
    u = w.view(np.uint64)
    lsb = np.right_shift(u, 45) & np.uint64(1)
    r = (u + np.uint64((1 << 44) - 1) + lsb) & np.uint64(~((1 << 45) - 1) & (2**64 - 1))
    nan = np.isnan(w)
    if nan.any():
        r[nan] = u[nan]
    f = r.view(np.float64).astype(np.float32)  # exact (bfloat16 values); inf past the range
    out[...] = np.right_shift(f.view(np.uint32), 16)


def _losses(x: np.ndarray, y: np.ndarray, tiny: float, res: ChunkResult,
            factor: float | None = None) -> None:
    """Count the entries of x whose scaled value y overflowed or underflowed.

    Overflow: finite x, non-finite y. Underflow, for a power of two (``factor`` given): y is
    not exactly x * factor (bits lost in the subnormal range, or zero); for any other factor:
    y is zero for a nonzero x, or subnormal for a normal x (precision lost beyond rounding).
    """
    finite = np.isfinite(x)
    if not np.isfinite(y).all():
        res.overflow += int(np.count_nonzero(~np.isfinite(y) & finite))
    small = np.abs(y) < tiny
    if not small.any():
        return
    if factor is not None:
        lost = small & finite & (y.astype(np.float64) / factor != x)
    else:
        lost = small & finite & (x != 0) & ((y == 0) | (np.abs(x) >= tiny))
    res.underflow += int(np.count_nonzero(lost))


def scale_chunk(raw: np.ndarray, dtype: str, factor: float, out: np.ndarray,
                work: np.ndarray) -> ChunkResult:
    """out (uint8, len(raw)) = the bytes of raw's entries times factor, in dtype ``dtype``.

    ``work`` is a scratch buffer of at least 8 bytes per entry.
    """
    with np.errstate(all="ignore"):  # overflow and underflow are counted, not warned about
        return _scale(raw, FORMATS[dtype], factor, out, work)


def _scale(raw: np.ndarray, fmt: _Format, factor: float, out: np.ndarray,
           work: np.ndarray) -> ChunkResult:
    bits = raw.view(fmt.uint)
    n = bits.size
    res = ChunkResult()
    mant, exp = math.frexp(factor)
    if mant == 0.5:  # 2**k: exact unless an entry leaves the normal range
        k = exp - 1
        safe = _exponent_range_is_safe(bits, fmt, k, work.view(fmt.uint)[:n])
        if fmt.native is np.float64 or (fmt.native is not None and abs(k) < fmt.emax >> 1):
            x = bits.view(fmt.native)  # the factor is a normal number of this dtype
            y = out.view(fmt.native)
            np.multiply(x, fmt.native(factor), out=y)
        elif fmt.native is not None:  # float16 with a factor outside its range: via float64
            x = bits.view(fmt.native)
            y = out.view(fmt.native)
            y[...] = np.multiply(x, factor, dtype=np.float64)
        else:  # bfloat16: its values are float32 values; so are the exact products
            xf = _bf16_to_f32(bits, work.view(np.float32)[:n])
            x = None
            if safe and abs(k) < 127:
                _f32_to_bf16(np.multiply(xf, np.float32(factor), out=xf), out.view(np.uint16))
            else:
                _f64_to_bf16(np.multiply(xf, factor, dtype=np.float64), out.view(np.uint16))
        if not safe:
            if fmt.native is None:
                x = _bf16_to_f32(bits, np.empty(n, np.float32))
                y = _bf16_to_f32(out.view(np.uint16), np.empty(n, np.float32))
            _losses(x, y, fmt.tiny, res, factor)
        return res
    # any other factor: float64 product, rounded once
    x = bits.view(fmt.native) if fmt.native is not None else _bf16_to_f32(
        bits, np.empty(n, np.float32))
    w = work.view(np.float64)[:n]
    np.multiply(x, factor, out=w, dtype=np.float64)
    if fmt.native is not None:
        y = out.view(fmt.native)
        y[...] = w
    else:
        _f64_to_bf16(w, out.view(np.uint16))
        y = _bf16_to_f32(out.view(np.uint16), np.empty(n, np.float32))
    _losses(x, y, fmt.tiny, res)
    np.divide(y, factor, out=w, dtype=np.float64)
    np.subtract(w, x, out=w)
    np.abs(w, out=w)
    w = w[np.isfinite(w)]
    res.roundtrip = float(w.max()) if w.size else 0.0
    ax = np.abs(x)
    ax = ax[np.isfinite(ax)]
    res.amax = float(ax.max()) if ax.size else 0.0
    return res
