"""Precision: an entry pushed out of its dtype's range by the scaling is an error, naming the
tensor, unless --allow-lossy; then the report says lossless: false and names it.

Two scaling paths: STP -> muP with --stored (plain weights divided by m_muP into stored muP
tensors: growth) and a format-1 muP SRC -> STP in the default format 2 (stored tensors times
m_muP into effective ones: shrinking); the bases' ``-mup`` folders are format 1.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.adversarial.conftest import factors_of
from tests.adversarial.helpers import assert_refused, run

FILE = "model.safetensors"


def _poke(src, name, value, index=0):
    t = load_file(src / FILE)
    t[name].view(-1)[index] = value
    save_file(t, src / FILE, metadata={"format": "pt"})


def _largest(bases, base):
    f = factors_of(bases, base)
    return max(f, key=f.get), max(f.values())


# (base folder, --to, dtype's poked value as a function of the factor, what is expected)
CASES = {
    "f16-overflow": ("gpt2-f16", "mup", lambda f: 65504.0 / f * 2, "overflow"),
    "f16-1100-times-64": ("gpt2-f16", "mup", lambda f: 1100.0, "overflow"),
    "f16-underflow-to-zero": ("gpt2-f16-mup", "stp", lambda f: 2.0 ** -24, "underflow"),
    "f16-1e-6-over-64": ("gpt2-f16-mup", "stp", lambda f: 1e-6, "underflow"),
    "f16-to-subnormal": ("gpt2-f16-mup", "stp", lambda f: 2.0 ** -14 * (1 + 2 ** -10),
                         "underflow"),
    "bf16-overflow": ("llama-bf16", "mup", lambda f: 3e38, "overflow"),
    "bf16-underflow": ("llama-bf16-mup", "stp", lambda f: 2.0 ** -130, "underflow"),
    "f32-overflow": ("gpt2", "mup", lambda f: 3e38, "overflow"),
    "f32-underflow": ("gpt2-mup", "stp", lambda f: 1e-44, "underflow"),
}


def _setup(bases, make_src, case):
    base, to, value, kind = CASES[case]
    src = make_src(base)
    plain = base.replace("-mup", "")
    name, factor = _largest(bases, plain)
    if to == "mup":
        _poke(src, name, value(factor))
    else:  # muP -> STP divides by the factor
        _poke(src, name, value(1 / factor))
    args = ["--to", to, "--json"] + (["-r", "0.5", "--stored"] if to == "mup" else [])
    return src, name, kind, args


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_range_is_refused(bases, make_src, tmp_path, capsys, case):
    src, name, kind, args = _setup(bases, make_src, case)
    err = assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *args], kind)
    assert name in err and "--allow-lossy" in err


@pytest.mark.parametrize("case", ["f16-overflow", "f16-underflow-to-zero", "bf16-overflow"])
def test_allow_lossy_reports_it(bases, make_src, tmp_path, capsys, case):
    src, name, kind, args = _setup(bases, make_src, case)
    code, out, err = run(capsys, "convert", src, tmp_path / "out", *args, "--allow-lossy")
    report = json.loads(out)
    assert code == 0 and report["lossless"] is False
    assert report["lossy"] == {name: {"overflow": int(kind == "overflow"),
                                      "underflow": int(kind == "underflow")}}
    got = load_file(tmp_path / "out" / FILE)[name].view(-1)[0].float()
    assert (torch.isinf(got) if kind == "overflow" else got == 0 or got.abs() < 2.0 ** -14)


def test_inf_and_nan_already_there_are_kept_not_created(bases, make_src, tmp_path, capsys):
    src = make_src("gpt2-f16")
    name, factor = _largest(bases, "gpt2-f16")
    _poke(src, name, float("inf"), 0)
    _poke(src, name, float("nan"), 1)
    code, out, _ = run(capsys, "convert", src, tmp_path / "out", "--to", "mup", "-r", "0.5",
                       "--json", "--stored")
    assert code == 0 and json.loads(out)["lossless"] is True
    a, b = load_file(src / FILE)[name].view(-1), load_file(tmp_path / "out" / FILE)[name].view(-1)
    assert torch.isinf(b[0]) and torch.isnan(b[1])
    assert torch.equal(b[2:], a[2:] * factor)  # the rest scaled exactly


def test_exact_subnormal_results_are_lossless(bases, make_src, tmp_path, capsys):
    """STP float16 -> muP -> STP: entries that were subnormal come back bit for bit."""
    src = make_src("gpt2-f16-mup")
    code, out, _ = run(capsys, "convert", src, tmp_path / "out", "--to", "stp", "--json")
    assert code == 0 and json.loads(out)["lossless"] is True
    a, b = load_file(bases / "gpt2-f16" / FILE), load_file(tmp_path / "out" / FILE)
    assert any(((v.abs() < 2.0 ** -14) & (v != 0)).any() for v in a.values())  # subnormals
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [[], ["--stored"]])
def test_huge_gamma_is_refused(make_src, tmp_path, capsys, extra):
    """gamma = 1e60: multipliers of 1e60 are inf in float32; refused in both formats (in the
    default one the weights would be copied, and gh.from_pretrained's W / m be zero). (A gamma
    whose square leaves float64, 1e300, is refused with the arguments: test_cli_args.py.)"""
    src = make_src("gpt2")
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", "--to", "mup", "-r",
                                      "0.5", "--gamma", "1e60", "--json", *extra],
                   "outside the normal range of float32")


def test_large_gamma_underflows_stored_tensors(make_src, tmp_path, capsys):
    """gamma = 1e36: the multipliers fit float32, but W / m of small entries underflows: the
    streaming check refuses --stored; the default copies the weights (the control)."""
    src = make_src("gpt2")
    args = ["--to", "mup", "-r", "0.5", "--gamma", "1e36", "--json"]
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *args, "--stored"],
                   "underflow")
    code, out, _ = run(capsys, "convert", src, tmp_path / "out", *args)
    assert code == 0 and json.loads(out)["scaled"] == 0


def test_non_power_of_two_is_not_reported_lossless(make_src, tmp_path, capsys):
    src = make_src("gpt2")
    code, out, _ = run(capsys, "convert", src, tmp_path / "out", "--to", "mup", "-r", "0.25",
                       "--json", "--stored")
    report = json.loads(out)
    assert code == 0 and report["lossless"] is False and report["not_power_of_two"]
    assert 0 < report["max_roundtrip_rel_error"] < 1e-6
    # the control: the default (effective tensors) copies the weights, nothing is rounded
    code, out, _ = run(capsys, "convert", src, tmp_path / "eff", "--to", "mup", "-r", "0.25",
                       "--json")
    report = json.loads(out)
    assert code == 0 and report["lossless"] is True and report["scaled"] == 0
    assert (tmp_path / "eff" / FILE).read_bytes() == (src / FILE).read_bytes()
