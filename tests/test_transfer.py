"""muTransfer: optimum interpolation, drift fit, learning-rate sweeps across widths and gauges."""

import json
import math

import numpy as np
import pytest

from gaugeconv.cli import main
from gaugeconv.data import load_data
from gaugeconv.diagnostics.coord_check import CoordCheckConfig, mlp_factory
from gaugeconv.diagnostics.optimum import interpolate_optimum, lr_grid, optimum_drift
from gaugeconv.diagnostics.transfer import (
    TransferConfig,
    compare_sweeps,
    format_report,
    lr_sweep,
    mlp_runner,
    split_data,
    transfer_check,
    warmup_decay,
)

GRID = [math.log2(lr) for lr in lr_grid(-6, 2, per_octave=2)]  # -6, -5.5, ..., 2


@pytest.mark.parametrize("x0", [-4.8, -2.0, -1.3, 0.25, 1.49])
def test_parabola_minimum_recovered(x0):
    losses = [0.3 * (x - x0) ** 2 + 0.05 for x in GRID]
    opt = interpolate_optimum(GRID, losses)
    assert opt.status == "interior"
    assert opt.log2_lr == pytest.approx(x0, abs=1e-12)
    assert opt.loss == min(losses) and abs(GRID[opt.index] - x0) <= 0.25


def test_optimum_on_the_edge_is_flagged_not_extrapolated():
    rising = [0.1 * (x + 9) for x in GRID]  # best at the smallest lr: the optimum may lie below
    opt = interpolate_optimum(GRID, rising)
    assert (opt.status, opt.log2_lr, opt.index) == ("edge-low", GRID[0], 0)
    falling = [0.1 * (9 - x) for x in GRID]
    opt = interpolate_optimum(GRID, falling)
    assert (opt.status, opt.log2_lr, opt.index) == ("edge-high", GRID[-1], len(GRID) - 1)


def test_diverged_points_are_handled():
    x0 = -1.2
    losses = [0.3 * (x - x0) ** 2 + 0.05 for x in GRID]
    # large lrs diverged (NaN, inf): the interior optimum is unaffected
    far = losses[:-4] + [math.nan, math.inf, math.nan, math.nan]
    assert interpolate_optimum(GRID, far).log2_lr == pytest.approx(x0, abs=1e-12)
    # a diverged neighbour: no parabola, the grid point with a status saying why
    i = min(range(len(GRID)), key=lambda k: losses[k])
    near = list(losses)
    near[i + 1] = math.inf
    opt = interpolate_optimum(GRID, near)
    assert (opt.status, opt.log2_lr) == ("neighbour-diverged", GRID[i])
    # a finite loss smaller than anything is not hidden by NaNs around it
    assert interpolate_optimum(GRID, [math.nan] * len(GRID)).status == "all-diverged"
    assert math.isnan(interpolate_optimum(GRID, [math.nan] * len(GRID)).log2_lr)
    with pytest.raises(ValueError):
        interpolate_optimum([0.0, 1.0, 3.0], [1.0, 0.5, 1.0])  # not uniform


def test_drift_fit_over_seeds():
    widths = [64, 128, 256, 512]
    noise = ([0, 0.1, 0, 0.1], [0.05, 0, 0.05, 0], [0, 0, -0.1, 0])
    per_seed = [[1.0 - 0.5 * k + e for k, e in enumerate(row)] for row in noise]
    slopes = [np.polyfit(np.log2(widths), row, 1)[0] for row in per_seed]
    drift, stderr = optimum_drift(widths, per_seed)
    assert drift == pytest.approx(np.mean(slopes), abs=1e-12)
    assert stderr == pytest.approx(np.std(slopes, ddof=1) / np.sqrt(3), abs=1e-12)
    assert math.isnan(optimum_drift(widths, [[0, 1, math.nan, 2]])[0])


def test_schedule_and_split():
    sched = warmup_decay(20, 0.1)
    assert [sched(k) for k in (0, 1, 2, 11, 20)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    data = load_data("digits")
    train, test = split_data(data, 0.25)
    assert (len(train.x), len(test.x)) == (1348, 449)
    assert train.d_out == 10 and not set(map(tuple, test.x[:50].tolist())) & set(
        map(tuple, train.x.tolist()))


def _cfg(optimizer, **kw):
    args = dict(optimizer=optimizer, widths=(64, 128, 256), per_octave=1, seeds=2, steps=60)
    args.update(kw)
    return TransferConfig(**args)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,grid", [("adam", (-9, 2)), ("sgd", (-3, 4))])
def test_sp_drifts_and_mup_transfers(optimizer, grid):
    """Widths 64-256: muP's optimal lr stays put, SP's falls with width (and is reported so)."""
    rep = transfer_check(_cfg(optimizer, log2_lr=grid), gauges=("mup",))
    mup, sp = rep.sweeps["mup"].analysis, rep.sweeps["sp"].analysis
    assert rep.verdicts["transfers"] and mup["transfer"] == "stable", mup["drift"]
    assert abs(mup["drift"]) <= 0.1 and mup["wider_not_worse"]
    assert sp["transfer"] == "drifts" and sp["drift"] < -0.3, sp["drift"]
    assert rep.verdicts["control_drifts"] and rep.passed
    # optima inside the grid (plain SGD's sits at its edge of stability: next to a blow-up)
    assert set(mup["optimum_status"]) <= {"interior", "neighbour-diverged"}
    assert set(sp["optimum_status"]) == {"interior"}
    assert "negative control (SP, one global lr): drifts" in format_report(rep)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gauges_give_the_same_sweep(optimizer):
    """STP, muP and rescaling gauges: bit-identical sweeps at widths 64 and 256 (every factor a
    power of two); at 128 the rescaling gauge's 1/sqrt(128) (and SGD-muP's sqrt(2) on the readin)
    give float32 rounding differences: close, but not bit for bit."""
    cfg = _cfg(optimizer, log2_lr=(-1, 1) if optimizer == "adam" else (1, 3), seeds=1, steps=25)
    rep = transfer_check(cfg, gauges=("stp", "mup", "rescaling"), control=False)
    g = rep.gauge_check
    pow2 = {"mup": [True, optimizer == "adam", True], "rescaling": [True, False, True]}
    for name in ("mup", "rescaling"):
        comp = g["comparisons"][name]
        assert comp["power_of_two"] == pow2[name]
        assert comp["bit_identical"] == pow2[name], (name, comp)
        if not pow2[name][1]:
            assert comp["max_rel_diff"][1] > 0  # rounding differs ...
            assert comp["median_rel_diff"][1] <= cfg.gauge_tolerance  # ... and stays small
    assert g["identical"] and not g["bit_identical_everywhere"]
    finite = [v for row in rep.sweeps["stp"].metrics["train_loss"][0] for v in row]
    assert all(math.isfinite(v) for v in finite)  # a real comparison, not NaN against NaN
    # negative control: the readout's lr doubled in one run is seen at once
    data = load_data("digits")
    train, test = split_data(data, 0.25)
    cc = CoordCheckConfig(richness=0.5, gauge="mup", optimizer=optimizer)
    broken = mlp_runner(mlp_factory(cc, train), train, test, cfg,
                        lr_scale=lambda gm: {"layers.2.weight": 2.0})
    other = lr_sweep(broken, cfg.widths, cfg.lrs(), 1)
    comp = compare_sweeps(rep.sweeps["mup"], other)
    assert comp["bit_identical"] == [False] * 3 and min(comp["max_rel_diff"]) > 1e-3


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    png, rich = tmp_path / "t.png", tmp_path / "r.png"
    code = main(["transfer-check", "--optimizer", "adam", "--widths", "64,256", "--log2-lr=-2,0",
                 "--seeds", "2", "--steps", "5", "--richness-axis", "0", "--json",
                 "--plot", str(png), "--plot-richness", str(rich)])
    out = json.loads(capsys.readouterr().out)
    assert code == (0 if out["passed"] else 1)
    rep = out["reports"]["adam"]
    assert set(rep["sweeps"]) == {"stp", "mup", "rescaling", "sp", "r=0"}
    assert rep["gauge_check"]["bit_identical_everywhere"] and rep["gauge_check"]["identical"]
    assert len(rep["sweeps"]["mup"]["metrics"]["test_acc"][1][1]) == 3
    assert {"drift", "drift_stderr", "optimum_log2_lr", "best_loss"} <= set(
        rep["sweeps"]["sp"]["analysis"])
    for f in (png, rich):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 20_000
    assert main(["transfer-check", "--gauges", "stp,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["transfer-check", "--plot-richness", str(rich)]) == 2
