"""The classifier on microsoft/mup's setups, inconsistent gammas and bad input (THEORY.md s. 5)."""

from __future__ import annotations

import math

import mup
import pytest
from torch import nn

from gaugeconv import GaugeError, build_mlp
from gaugeconv.diagnostics.classify import (
    PRESETS,
    classify_abc,
    classify_factory,
    classify_measured,
)

D_IN, N0 = 64, 64
SMALLER = "readout initialised smaller"


def mup_model(n):
    def net(w):
        return nn.Sequential(nn.Linear(D_IN, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(),
                             mup.MuReadout(w, 10))

    model = net(n)
    mup.set_base_shapes(model, net(N0), delta=net(2 * N0))
    return model


def measured_from_mup(kind: str, widths=(128, 256, 512), eta=0.01):
    """Multipliers, stored init stds (mup's default path) and group lrs of a real mup setup."""
    out = {}
    for n in widths:
        model = mup_model(n)
        opt = (mup.MuAdam if kind == "adam" else mup.MuSGD)(model.parameters(), lr=eta)
        lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        readout = model[4]
        per_role = {}
        for role, layer in (("readin", model[0]), ("hidden", model[2]), ("readout", readout)):
            fan_in = layer.weight.shape[1]
            std = 1 / math.sqrt(3 * fan_in)  # torch's default init (kaiming uniform, a = sqrt 5)
            mult = 1.0
            if layer is readout:  # rescale_params and MuReadout's own multiplier
                std *= math.sqrt(readout.width_mult())
                mult = readout.output_mult / readout.width_mult()
            per_role[role] = {"multiplier": mult, "init_std": std, "lr": lr[id(layer.weight)],
                              "fan_in": fan_in}
        out[n] = per_role
    return out


def test_mup_library_presets_are_exactly_mup():
    for kind in ("adam", "sgd"):
        family, abc = PRESETS[f"mup-library-{kind}"]
        c = classify_abc(abc, family)
        assert c.in_family and c.richness == 0.5 and c.gauges == ["custom"]
        assert not any(SMALLER in note for note in c.notes)  # rescale_params: muP's init
        c = classify_abc(*reversed(PRESETS[f"mup-library-{kind}-norescale"]))
        assert c.in_family and any(SMALLER in note for note in c.notes)


@pytest.mark.parametrize("kind, lr_gamma", [("adam", 1.0), ("sgd", 1 / math.sqrt(N0))])
def test_measured_mup_reports_both_gammas(kind, lr_gamma):
    c = classify_measured(measured_from_mup(kind), kind)
    assert c.in_family and c.richness == 0.5
    assert c.abc["readout"] == [1.0, 0.0, 0.0 if kind == "adam" else -1.0]
    assert c.gamma == pytest.approx(math.sqrt(3 / N0))  # 0.2165: from the readout init
    assert c.gamma_lr == pytest.approx({"readin": lr_gamma, "hidden": lr_gamma})
    (note,) = [n for n in c.notes if "different gamma" in n]
    assert "0.2165" in note and f"{lr_gamma:.4g}" in note


def test_consistent_gamma_gives_no_warning():
    c = classify_factory(lambda w: build_mlp(64, 10, w, gauge="mup", optimizer="adam",
                                             gamma=2.0, seed=None), lr=0.3)
    assert c.gamma == pytest.approx(2.0)
    assert c.gamma_lr == pytest.approx({"readin": 2.0, "hidden": 2.0})
    assert not any("different gamma" in n for n in c.notes)


def good():
    return {n: {"readin": {"multiplier": 1, "init_std": 64**-0.5, "lr": 0.1, "fan_in": 64},
                "hidden": {"multiplier": 1, "init_std": n**-0.5, "lr": 0.1, "fan_in": n},
                "readout": {"multiplier": 1, "init_std": n**-0.5, "lr": 0.1, "fan_in": n}}
            for n in (128, 512, 2048)}


@pytest.mark.parametrize("change, match", [
    (lambda m: m[128]["hidden"].update(lr=float("nan")), "width 128, hidden: lr=nan"),
    (lambda m: m[512]["readout"].update(init_std=0.0), "zero-initialised readout"),
    (lambda m: m[512]["readin"].update(multiplier=-1.0), "readin: multiplier=-1.0 must be > 0"),
    (lambda m: m[2048]["readout"].pop("fan_in"), "2048, readout: 'fan_in' is missing"),
    (lambda m: m[2048].pop("hidden"), "no values for role 'hidden'"),
    (lambda m: m[512]["hidden"].update(lr=0.37), "hidden lr .* not a power of the width"),
    (lambda m: [m.pop(512), m.pop(2048)], "two or more widths"),
])
def test_measured_refusals(change, match):
    m = good()
    classify_measured(m, "sgd")  # the unchanged input is accepted
    change(m)
    with pytest.raises(GaugeError, match=match):
        classify_measured(m, "sgd")


@pytest.mark.parametrize("abc, match", [
    ({"readin": (0, 0, float("nan")), "hidden": (0, 0.5, 0), "readout": (0, 0.5, 0)},
     "readin: abc exponent nan"),
    ({"readin": (0, 0, 0), "hidden": (0, 0.5)}, r"lack role\(s\) \['readout'\]"),
    ({"readin": (0, 0, 0), "hidden": (0, 0.5), "readout": (0, 0.5, 0)}, "hidden: abc needs three"),
    ({"readin": (0, 0, 0), "hidden": (0, 0.5, 0), "readout": (0, 0.5, 0), "head": (0, 0, 0)},
     "unknown role"),
])
def test_abc_refusals(abc, match):
    with pytest.raises(GaugeError, match=match):
        classify_abc(abc, "sgd")


def test_cli_preset_json(capsys):
    from gaugeconv.cli import main

    assert main(["classify", "--preset", "mup-library-adam", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["in_family"] and out["richness"] == 0.5 and out["notes"] == []

