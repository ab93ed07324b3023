"""Richness diagnostics: coordinate check, negative controls, classifier, lazy limit."""

import json

import pytest

from gaugeconv import build_mlp
from gaugeconv.cli import main
from gaugeconv.data import load_data
from gaugeconv.diagnostics import (
    PRESETS,
    CoordCheckConfig,
    LazyConfig,
    classify_abc,
    classify_factory,
    classify_measured,
    coord_check,
    lazy_limit,
)
from gaugeconv.diagnostics.coord_check import mlp_factory, negative_lr_scale

WIDTHS = (128, 256, 512, 1024, 2048)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("r", [0.0, 0.25, 0.5])
def test_coord_check_on_the_family(optimizer, r):
    rep = coord_check(CoordCheckConfig(richness=r, optimizer=optimizer, widths=WIDTHS))
    assert rep.passed, rep.verdicts
    for layer in rep.layers:
        res = rep.results[layer]
        if rep.roles[layer] in ("readin", "hidden"):
            assert abs(res["feature_change"]["slope"] - (r - 0.5)) <= 0.1, layer
            assert abs(res["rms_h_init"]["slope"]) <= 0.1 and abs(res["rms_h_final"]["slope"]) <= 0.1
        else:
            assert abs(res["output_change"]["slope"]) <= 0.1
            assert abs(res["rms_h_init"]["slope"] + r) <= 0.1  # f at init ~ 1/alpha
    assert set(rep.verdicts) == {"D0", "D1", "D2", "D3", "richness"}


@pytest.mark.parametrize("variant,desideratum,layer,quantity", [
    ("sp", "D1", "layers.2", "output_change"),
    ("readout-too-large", "D0", "layers.2", "rms_h_init"),
    ("hidden-lr", "D2", "layers.1", "loss_share"),
])
@pytest.mark.slow
def test_negative_controls_fail_naming_the_layer(variant, desideratum, layer, quantity):
    cfg = CoordCheckConfig(richness=0.0 if variant == "sp" else 0.5, widths=WIDTHS[:4], seeds=2)
    data = load_data("digits")
    rep = coord_check(cfg, mlp_factory(cfg, data, variant), data,
                      lr_scale=negative_lr_scale(variant))
    assert not rep.passed
    failures = rep.verdicts[desideratum]["failures"]
    assert any(f["layer"] == layer and f["quantity"] == quantity for f in failures), failures


def test_classifier_presets_and_named_points():
    expect = {"ntp": (0.0, "ntp"), "ntp-lr": (0.0, "ntp-lr"), "mup": (0.5, "mup"),
              "mup-lr": (0.5, "mup-lr"), "mfp": (0.5, "mfp"),
              "mup-library-adam": (0.5, None), "mup-library-sgd": (0.5, None)}
    for name, (r, point) in expect.items():
        family, abc = PRESETS[name]
        c = classify_abc(abc, family)
        assert c.in_family and c.richness == r and c.named_point == point, name
    assert classify_abc(*reversed(PRESETS["mup-library-adam"])).gauges == ["custom"]
    sp = classify_abc(PRESETS["sp"][1], "sgd")
    assert not sp.in_family
    assert {(f["role"], f["desideratum"]) for f in sp.failures} == {("hidden", "D1"),
                                                                    ("readout", "D1")}
    assert sp.nearest["named_point"] == "ntp-lr"  # same init and multipliers, per-layer lrs


@pytest.mark.parametrize("point", ["ntp", "ntp-lr", "mup", "mup-lr", "mfp"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_classifier_from_models_at_two_widths(point, optimizer):
    c = classify_factory(lambda w: build_mlp(64, 10, w, gauge=point, optimizer=optimizer,
                                             gamma=2.0, seed=None), lr=0.3)
    assert c.in_family and c.named_point == point
    assert c.gamma == pytest.approx(2.0) and c.eta == pytest.approx(0.3)


def test_classifier_from_measured_sp():
    # standard parameterization: N(0, 1/fan_in) everywhere, one global lr
    measured = {n: {"readin": {"multiplier": 1, "init_std": 64**-0.5, "lr": 0.1, "fan_in": 64},
                    "hidden": {"multiplier": 1, "init_std": n**-0.5, "lr": 0.1, "fan_in": n},
                    "readout": {"multiplier": 1, "init_std": n**-0.5, "lr": 0.1, "fan_in": n}}
                for n in (128, 512, 2048)}
    c = classify_measured(measured, "sgd")
    assert not c.in_family
    assert c.abc == {role: [float(x) for x in v] for role, v in PRESETS["sp"][1].items()}
    assert c.nearest["richness"] == 0.0 and c.nearest["named_point"] == "ntp-lr"


@pytest.mark.slow
@pytest.mark.parametrize("r", [0.0, 0.25, 0.5])
def test_lazy_limit_slopes(r):
    out = lazy_limit(LazyConfig(richness=r))
    assert abs(out["slope"] - (2 * r - 1)) <= 0.15, out["slope"]
    assert out["pass"] and out["approaches_linearization"] == (r < 0.5)


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    png = tmp_path / "cc.png"
    code = main(["coord-check", "-r", "0.25", "--widths", "128,256,512", "--seeds", "2",
                 "--json", "--plot", str(png)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"]
    st = report["results"]["layers.1"]["feature_change"]
    assert set(st) >= {"slope", "expected", "stderr", "pass"} and st["expected"] == -0.25
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert main(["coord-check", "--negative-control", "sp", "--widths", "128,256,512",
                 "--seeds", "1"]) == 1
    assert "D1        FAIL  layers.2 (readout)" in capsys.readouterr().out
    assert main(["classify", "--preset", "sp"]) == 0
    out = capsys.readouterr().out
    assert "NOT in the richness family" in out and "nearest member: r = 0" in out
    assert main(["classify", "--abc", "readin=-0.5,0.5,0; hidden=0,0.5,0; readout=0.5,0.5,0",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["named_point"] == "mup"
    assert main(["classify", "--abc", "readin=0,0"]) == 2
    assert main(["lazy-check", "-r", "0", "--widths", "64,128", "--seeds", "1", "--steps", "5",
                 "--json"]) in (0, 1)
    assert "slope" in json.loads(capsys.readouterr().out)
