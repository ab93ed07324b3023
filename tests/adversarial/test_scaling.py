"""The chunk kernel against numpy/torch references: powers of two bit for bit, every
overflow and underflow counted, on random bit patterns (inf, NaN, subnormals included)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeconv.checkpoint.scaling import scale_chunk

UINT = {"F64": np.uint64, "F32": np.uint32, "F16": np.uint16, "BF16": np.uint16}
FLOAT = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def _run(bits, dtype, factor):
    raw = bits.view(np.uint8)
    out = np.empty_like(raw)
    res = scale_chunk(raw, dtype, factor, out, np.empty(bits.size * 8, np.uint8))
    return out.view(UINT[dtype]), res


def _as_float(bits, dtype):
    """float64 values of the bit patterns (bfloat16 through torch)."""
    if dtype == "BF16":
        return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).double().numpy()
    return bits.view(FLOAT[dtype]).astype(np.float64)


def _bf16_round(w):
    """Round to nearest even bfloat16, element by element (8 significant bits, quantum
    2**-133 below 2**-126, inf from (2 - 2**-8) * 2**127 on), as float64."""
    out = []
    for v in w:
        if math.isnan(v) or math.isinf(v) or v == 0:
            out.append(v)
        elif abs(v) >= (2 - 2 ** -8) * 2.0 ** 127:
            out.append(math.copysign(math.inf, v))
        else:
            q = 2.0 ** (max(math.frexp(v)[1] - 1, -126) - 7)
            out.append(float(np.rint(v / q)) * q)
    return np.array(out)


def _reference(bits, dtype, factor):
    """x and the correctly rounded x * factor (numpy's float64 -> float16/32 rounds once)."""
    x = _as_float(bits, dtype)
    with np.errstate(all="ignore"):
        w = x * factor
    if dtype == "BF16":
        y = torch.from_numpy(_bf16_round(w)).float().to(torch.bfloat16)  # exact: bf16 values
        return x, y.view(torch.int16).numpy().view(np.uint16)
    with np.errstate(all="ignore"):
        return x, w.astype(FLOAT[dtype]).view(UINT[dtype])


patterns = st.sampled_from(sorted(UINT)).flatmap(lambda d: st.tuples(
    st.just(d),
    st.lists(st.integers(0, int(np.iinfo(UINT[d]).max)), min_size=1, max_size=64),
    st.integers(-40, 40)))


@settings(max_examples=150, deadline=None)
@given(patterns)
def test_powers_of_two_are_bit_exact_and_losses_counted(case):
    dtype, ints, k = case
    bits = np.array(ints, dtype=UINT[dtype])
    factor = 2.0 ** k
    got, res = _run(bits, dtype, factor)
    x, want = _reference(bits, dtype, factor)
    y = _as_float(want, dtype)
    finite = np.isfinite(x)
    # NaN payloads may be quieted; every other entry is the correctly rounded product
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(_as_float(got, dtype)[nan]).all()
    assert res.overflow == np.count_nonzero(finite & ~np.isfinite(y))
    with np.errstate(all="ignore"):
        inexact = finite & np.isfinite(y) & (y / factor != x)
    assert res.underflow == np.count_nonzero(inexact)


@settings(max_examples=80, deadline=None)
@given(patterns, st.floats(0.01, 100.0))
def test_other_factors_round_once(case, factor):
    dtype, ints, _ = case
    bits = np.array(ints, dtype=UINT[dtype])
    got, res = _run(bits, dtype, factor)
    x, want = _reference(bits, dtype, factor)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    with np.errstate(all="ignore"):
        over = np.isfinite(x) & ~np.isfinite(_as_float(got, dtype))
    assert res.overflow == np.count_nonzero(over)


@pytest.mark.parametrize("dtype,value,factor,kind", [
    ("F16", 1100.0, 64.0, "overflow"), ("F16", 1e-6, 1 / 64, "underflow"),
    ("F32", 3e38, 2.0, "overflow"), ("F32", 1e-45, 0.5, "underflow"),
    ("F16", 60000.0, 1.5, "overflow"), ("F32", 1e-38, 1e-10, "underflow"),
])
def test_named_edges(dtype, value, factor, kind):
    bits = np.array([value, 1.0], dtype=FLOAT[dtype]).view(UINT[dtype])
    _, res = _run(bits, dtype, factor)
    assert (res.overflow, res.underflow) == ((1, 0) if kind == "overflow" else (0, 1))
    _, res = _run(np.array([1.0, -2.0], dtype=FLOAT[dtype]).view(UINT[dtype]), dtype, factor)
    assert (res.overflow, res.underflow) == (0, 0)  # the control: ordinary values are fine
