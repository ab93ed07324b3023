import json
import subprocess
import sys

import pytest

from gaugeconv.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_json(capsys):
    code, out, _ = run(capsys, "table", "--richness", "0.5", "--width", "256", "--optimizer",
                       "adam", "--json")
    assert code == 0
    table = json.loads(out)
    rows = {(r["gauge"], r["role"]): r for r in table["rows"]}
    assert rows[("mup", "hidden")]["lr_factor"] == pytest.approx(1.0)
    assert rows[("mup", "hidden")]["multiplier"] == pytest.approx(1 / 256)
    assert rows[("rescaling", "readout")]["init_std"] == pytest.approx(1.0)
    assert rows[("stp", "readout")]["init_std"] == pytest.approx(1 / 256)


def test_table_text(capsys):
    code, out, _ = run(capsys, "table", "-r", "0", "-n", "100")
    assert code == 0 and "rescaling" in out and "wd x (decoupled)" in out


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_verify_json(capsys, optimizer, dtype, tol):
    code, out, _ = run(capsys, "verify", "--richness", "0.5", "--from", "stp", "--to", "mup",
                       "--optimizer", optimizer, "--steps", "12", "--width", "96", "--dtype", dtype,
                       "--convert-at", "4", "--json")
    report = json.loads(out)
    assert code == 0 and report["equivalent"] is True and report["steps"] == 12
    assert set(report["max_rel_diff"]) == {"loss", "output", "weights"}
    assert max(report["max_rel_diff"].values()) <= tol
    assert "load_digits" in report["data"]


def test_verify_negative_control_fails_with_exit_1(capsys):
    code, out, _ = run(capsys, "verify", "--optimizer", "adamw", "--steps", "10",
                       "--negative-control", "eps", "--eps", "1e-12")
    assert code == 1 and "NOT EQUIVALENT" in out


@pytest.mark.parametrize("argv,message", [
    (["verify", "--richness", "0.7"], "richness r=0.7 is outside [0, 1/2]"),
    (["verify", "--to", "ntk"], "unknown gauge 'ntk'"),
    (["verify", "--from", "mfp", "--to", "ntp"], "named point 'ntp' has r=0.0, but r=0.5"),
    (["verify", "--gamma", "-1"], "gamma=-1.0 must be"),
    (["table", "-r", "-0.1", "-n", "8"], "richness r=-0.1"),
])
def test_bad_input_exits_2_and_names_the_item(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and out == ""


@pytest.mark.slow
def test_demo_json(capsys):
    code, out, _ = run(capsys, "demo", "--steps", "12", "--width", "64", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert report["negative_control"]["equivalent"] is False
    assert all(r["equivalent"] for r in report["runs"].values())


@pytest.mark.parametrize("command", ["", "table", "verify", "demo", "roles", "convert",
                                     "coord-check", "classify", "lazy-check"])
def test_every_command_has_help(command):
    argv = [sys.executable, "-m", "gaugeconv", *([command] if command else []), "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: gaugeconv" in proc.stdout


@pytest.mark.slow
def test_the_command_exits_fast_and_complete(tmp_path):
    """`python -m gaugeconv convert` ends with os._exit (skipping torch's teardown): its output
    is complete, its exit code the command's, DST in place; and an error still exits 2."""
    from tests.hf.tiny import build

    build("gpt2", 48).save_pretrained(tmp_path / "src")
    argv = [sys.executable, "-m", "gaugeconv", "convert", str(tmp_path / "src"),
            str(tmp_path / "dst"), "--to", "mup", "-r", "0.5", "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tensors"] > 0 and report["seconds_import"] > 0
    assert (tmp_path / "dst" / "model.safetensors").stat().st_size == \
        (tmp_path / "src" / "model.safetensors").stat().st_size
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.endswith("already exists; pass overwrite (--overwrite) to replace it\n")

