"""Arguments of verify, coord-check, lazy-check and classify: refused in one line, exit 2,
before any training starts (each case returns in milliseconds)."""

import json

import pytest

from tests.adversarial.helpers import run

CASES = [
    (["verify", "--steps", "0"], "--steps must be >= 1"),
    (["verify", "--steps", "-1"], "--steps must be >= 1"),
    (["verify", "--steps", "5", "--convert-at", "5"], "--convert-at 5 is outside the run"),
    (["verify", "--convert-at", "-1"], "--convert-at -1 is outside the run"),
    (["verify", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["verify", "--width", "0"], "--width must be >= 1"),
    (["verify", "--depth", "0"], "--depth must be >= 1"),
    (["verify", "--lr", "-0.1"], "--lr must be a finite positive number"),
    (["verify", "--lr", "nan"], "--lr must be a finite positive number"),
    (["verify", "--tolerance", "0"], "--tolerance must be"),
    (["verify", "--eps", "inf"], "--eps must be"),
    (["verify", "--weight-decay", "-1"], "--weight-decay"),
    (["coord-check", "--seeds", "0"], "--seeds must be >= 1"),
    (["coord-check", "--steps", "0"], "--steps must be >= 1"),
    (["coord-check", "--widths", "8,8"], "at least two distinct widths"),
    (["coord-check", "--widths", "8,16,8"], "lists a width twice"),
    (["coord-check", "--lr", "0"], "--lr must be"),
    (["lazy-check", "--seeds", "0"], "--seeds must be >= 1"),
    (["lazy-check", "--widths", "8,8"], "at least two distinct widths"),
    (["lazy-check", "--steps", "-3"], "--steps must be >= 1"),
    (["classify", "--abc", "readin=0,0,nan; hidden=0,0.5,0; readout=0,0.5,0"], "finite"),
    # NaN and inf richness and gamma: refused before anything compares them (NaN != NaN)
    (["verify", "--richness", "nan"], "richness r=nan is not a finite number"),
    (["verify", "--richness=-inf"], "richness r=-inf is not a finite number"),
    (["verify", "--from", "ntp", "--to", "ntp-lr", "--richness", "nan"], "r=nan is not a finite"),
    (["table", "-r", "nan", "-n", "64"], "richness r=nan is not a finite number"),
    (["demo", "-r", "inf"], "richness r=inf is not a finite number"),
    (["coord-check", "-r", "nan"], "richness r=nan is not a finite number"),
    (["lazy-check", "-r", "nan"], "richness r=nan is not a finite number"),
    (["transfer-check", "--richness-axis", "0,nan"], "richness r=nan is not a finite number"),
    (["roles", "/nonexistent", "-r", "nan"], "richness r=nan is not a finite number"),
    (["convert", "/nonexistent", "/nonexistent2", "--to", "mup", "-r", "nan"],
     "richness r=nan is not a finite number"),
    # gamma whose square leaves float64 (it was "ZeroDivisionError: float division by zero")
    (["table", "-r", "0.5", "-n", "64", "--gamma", "1e-300"], "--gamma=1e-300 is too small"),
    (["verify", "--gamma", "1e-300"], "--gamma=1e-300 is too small"),
    (["verify", "--gamma", "1e300"], "--gamma=1e+300 is too large"),
    (["verify", "--gamma", "nan"], "--gamma=nan must be a finite number > 0"),
    (["roles", "/nonexistent", "-r", "0.5", "--gamma", "1e-300"], "--gamma=1e-300 is too small"),
    (["convert", "/nonexistent", "/nonexistent2", "--to", "mup", "-r", "0.5", "--gamma",
      "1e-300"], "--gamma=1e-300 is too small"),
    # a plot that cannot be written: refused before the training, not after it
    (["coord-check", "--plot", "/missing/dir/x.png"], "--plot /missing/dir/x.png: the folder "
                                                      "/missing/dir does not exist"),
    (["coord-check", "--plot", "/"], "--plot / is a folder"),
    (["coord-check", "--plot", "plot.nosuchformat"], "matplotlib cannot write .nosuchformat"),
    (["transfer-check", "--plot", "/missing/x.png"], "the folder /missing does not exist"),
    (["transfer-check", "--richness-axis", "0", "--plot-richness", "/missing/x.png"],
     "--plot-richness /missing/x.png: the folder /missing does not exist"),
]


@pytest.mark.parametrize("argv,match", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_arguments(capsys, argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err


def _at(w):
    """SP at width w: init std n^-1/2 for hidden and readout, constant multipliers and lr."""
    return {"readin": {"multiplier": 1.0, "init_std": 1.0, "lr": 0.1, "fan_in": 1},
            "hidden": {"multiplier": 1.0, "init_std": w ** -0.5, "lr": 0.1, "fan_in": w},
            "readout": {"multiplier": 1.0, "init_std": w ** -0.5, "lr": 0.1, "fan_in": w}}


def _measured(widths=(256, 1024)):
    return {str(w): _at(w) for w in widths}


def _nan(d):
    d["256"]["hidden"]["init_std"] = float("nan")
    return d


def _string(d):
    d["256"]["readout"]["lr"] = "0.1"
    return d


def _missing_role(d):
    d["1024"].pop("readout")
    return d


def _missing_field(d):
    d["1024"]["hidden"].pop("fan_in")
    return d


MEASURED = {
    "missing-file": (None, "cannot read it"),
    "a-folder": ("DIR", "cannot read it"),
    "not-json": ("{oops", "not valid JSON"),
    "not-utf8": (b"\xff\xfe", "not UTF-8"),
    "a-list": ([1, 2], "expected an object"),
    "width-not-int": ({"wide": _at(256), "1024": _at(256)}, "is not a width"),
    "width-zero": ({"0": _at(256), "1024": _at(256)}, "is not a width"),
    "one-width": (_measured((256,)), "two or more widths"),
    "nan-value": (_nan(_measured()), "not a finite positive number"),
    "string-value": (_string(_measured()), "not a finite positive number"),
    "missing-role": (_missing_role(_measured()), "lacks role"),
    "missing-field": (_missing_field(_measured()), "not a finite positive number"),
    "roles-a-list": ({"256": [1], "1024": _at(256)}, "not an object of roles"),
    "deep": ("[" * 100000 + "]" * 100000, "nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(MEASURED))
def test_bad_measured_file(tmp_path, capsys, case):
    content, match = MEASURED[case]
    path = tmp_path / "m.json"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    code, out, err = run(capsys, "classify", "--measured", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err


def test_good_measured_file_is_classified(tmp_path, capsys):
    """The control: the same file without the defect is read and classified (SP, r = 0)."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_measured()))
    code, out, _ = run(capsys, "classify", "--measured", path, "--json")
    result = json.loads(out)
    assert code == 0 and result["abc"]["hidden"] == [0.0, 0.5, 0.0]
