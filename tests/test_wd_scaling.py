"""Weight-decay scaling and per-tensor constants: choices of the parameterization that every
gauge carries exactly (THEORY.md sections 4 and 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gaugeconv as gc
from gaugeconv.mlp import ReferenceMLP

ETA, WD = 0.05, 0.1


def gauged(gauge, optimizer="adam", wd_scaling="coupled", consts=None, width=64,
           form="materialized"):
    module = ReferenceMLP(16, 5, [width, width], "tanh", True, torch.float64)
    specs = module.tensor_specs()
    if consts:
        import dataclasses

        specs = [dataclasses.replace(s, **consts.get(s.name, {})) for s in specs]
    param = gc.Parameterization(specs, 0.5, gauge, optimizer, width, wd_scaling)
    return gc.attach(module, param, form=form).initialize(0)


CONSTS = {"layers.0.weight": {"lr_const": 2.0, "init_const": 0.5, "eps_const": 3.0},
          "layers.1.weight": {"lr_const": 0.25, "wd_const": 3.0},
          "layers.2.weight": {"lr_const": 32.0, "init_const": 5.0}}


@pytest.mark.parametrize("gauge", ["stp", "mup", "rescaling"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_decay_fraction_per_step(gauge, optimizer):
    family = "adam" if optimizer == "adamw" else "sgd"
    for scaling in ("coupled", "independent"):
        gm = gauged(gauge, family, scaling)
        opt = gm.make_optimizer(optimizer, ETA, weight_decay=WD)
        for group in opt.param_groups:
            plan = gm.plans[group["param_names"][0]]
            if group["params"][0].ndim < 2:
                assert group["weight_decay"] == 0.0
                continue
            # per-step decay fraction: lr*wd for AdamW's and for SGD's (added to the gradient)
            # decay, measured on effective weights (same in every gauge)
            want = ETA * WD * (plan.target.lr_factor if scaling == "coupled" else 1.0)
            assert group["lr"] * group["weight_decay"] == pytest.approx(want, rel=1e-12)


def _gauge_form(spec):
    """"mup" (materialized) or "mup/plain": a gauge and a form."""
    gauge, _, form = spec.partition("/")
    return gauge, form or "materialized"


def run(gauges, optimizer, scaling, consts=None, steps=6):
    family = "adam" if optimizer in ("adam", "adamw") else "sgd"
    gauge, form = _gauge_form(gauges[0])
    gm = gauged(gauge, family, scaling, consts, form=form)
    hyper = {"weight_decay": WD}
    hyper.update({"eps": 1e-4} if family == "adam" else {"momentum": 0.9})
    opt = gm.make_optimizer(optimizer, ETA, **hyper)
    gen = torch.Generator().manual_seed(2)
    outs = []
    for t in range(steps):
        if t == 3 and len(gauges) > 1:
            gauge, form = _gauge_form(gauges[1])
            gm.convert(gauge, optimizer=opt, form=form)
        x = torch.randn(8, 16, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(gm.module(x), y).backward()
        opt.step()
        outs.append(gm.module(x).detach())
    return torch.stack(outs)


def rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_both_scalings_and_constants_keep_gauges_equivalent(optimizer):
    for scaling in ("coupled", "independent"):
        for consts in (None, CONSTS):
            a = run(["stp"], optimizer, scaling, consts)
            for pair in (["stp", "mup"], ["rescaling", "stp"], ["mup", "rescaling"],
                         ["mup/plain", "rescaling"], ["mup", "mup/plain"]):
                assert rel(a, run(pair, optimizer, scaling, consts)) <= 1e-12, (scaling, pair)
    # negative controls: the scaling and the constants change the trajectory
    assert rel(run(["stp"], optimizer, "coupled"), run(["stp"], optimizer, "independent")) > 1e-6
    assert rel(run(["stp"], optimizer, "coupled"), run(["stp"], optimizer, "coupled", CONSTS)) > 1e-6


def test_constants_enter_targets_and_stay_under_gauge_change():
    gm = gauged("mup", "adam", consts=CONSTS)  # materialized: plans are the muP gauge's
    plan = gm.plans["layers.0.weight"]
    assert plan.target.variance == pytest.approx(0.25 / 16)
    assert plan.lr_factor == pytest.approx(1.0)  # muP gauge: stored lr = eta, constants too
    assert plan.eps_factor == pytest.approx(3.0 * plan.multiplier)
    stp = gm.parameterization.with_gauge("stp")
    assert stp.plans["layers.0.weight"].lr_factor == pytest.approx(2.0 / 16 / math.sqrt(64) * 8)
    other = gc.Parameterization(list(gauged("stp", "adam").parameterization.specs.values()), 0.5,
                                "stp", "adam", 64)
    with pytest.raises(gc.GaugeError, match="constants"):
        gm.parameterization.scales_to(other)
    indep = gc.Parameterization(list(gm.parameterization.specs.values()), 0.5, "stp", "adam", 64,
                                "independent")
    with pytest.raises(gc.GaugeError, match="weight-decay scaling"):
        gm.parameterization.scales_to(indep)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True])
def test_bad_constants_refused(bad):
    with pytest.raises(gc.GaugeError, match="w.*lr_const"):
        gc.TensorSpec("w", "hidden", 4, lr_const=bad)
    with pytest.raises(gc.GaugeError, match="wd_scaling"):
        gc.Parameterization([gc.TensorSpec("w", "hidden", 4)], 0.5, "stp", "sgd", 4, "fixed")


def test_trainer_integration_exposes_the_scaling():
    import gaugeconv.hf as gh
    from gaugeconv.hf.trainer import GaugeOptimizerFactory
    from tests.hf.tiny import build

    for scaling in ("coupled", "independent"):
        model = gh.apply_gauge(build("gpt2", 48, dtype=torch.float64),
                               gh.GaugeConfig(richness=0.5, gauge="mup", wd_scaling=scaling))
        assert gh.gauge_config_of(model).wd_scaling == scaling  # kept in config.json's entry
        opt = GaugeOptimizerFactory()(model, "adamw", lr=ETA, weight_decay=WD)
        plans = gh.get_gauged(model).plans
        decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
        assert decayed
        for g in decayed:
            lam = plans[g["param_names"][0]].target.lr_factor
            want = ETA * WD * (lam if scaling == "coupled" else 1.0)
            assert g["lr"] * g["weight_decay"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(gc.GaugeError, match="wd_scaling"):
        gh.GaugeConfig(richness=0.5, wd_scaling="width")
