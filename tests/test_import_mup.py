"""Taking over microsoft/mup models and optimizers exactly (THEORY.md sections 3, 4 and 6).

The reference runs use the real ``mup`` package (set_base_shapes, MuReadout, MuSharedReadout,
MuAdam, MuAdamW, MuSGD) in float64; the imported runs use gaugeconv's multipliers and per-tensor
groups, in mup's own gauge and converted to STP, rescaling and muP.
"""

from __future__ import annotations

import mup
import pytest
import torch
from torch import nn

import gaugeconv as gc
from gaugeconv.importers import from_mup
from tests.mup_models import (
    D_IN,
    HYPER,
    N0,
    MupMLP,
    MupTied,
    batches,
    effective_weight_gap,
    make,
    mu_optimizer,
    rel,
    train_step,
)


def compare(kind, gauges, import_at=3, steps=8, n=128, decoupled_wd=False, cls=MupMLP,
            eps_convention="stored", **hyper):
    """Max relative difference of outputs (per step) and effective weights (at the end)."""
    hyper = {**HYPER[kind], **hyper}
    tied = cls is MupTied
    a, b = make(n, cls), make(n, cls)
    opt_a = mu_optimizer(kind, a.parameters(), decoupled_wd, **hyper)
    opt_b = mu_optimizer(kind, b.parameters(), decoupled_wd, **hyper)
    probe = next(batches(1, tied, seed=7))[0]
    worst, imported = 0.0, None
    for t, (x, y) in enumerate(batches(steps, tied)):
        if t == import_at:
            imported = from_mup(b, opt_b, gauges[0], eps_convention=eps_convention)
            opt_b = imported.optimizer
        elif imported is not None and t == import_at + 2 and len(gauges) > 1:
            imported.gauged.convert(gauges[1], optimizer=opt_b)
        train_step(a, opt_a, x, y)
        train_step(b, opt_b, x, y)
        with torch.no_grad():
            worst = max(worst, rel(a(probe), b(probe)))
    return worst, effective_weight_gap(a, imported), imported


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("decoupled_wd", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("import_at", [pytest.param(0, marks=pytest.mark.slow), 3])
def test_imported_run_follows_mup(kind, decoupled_wd, import_at):
    # fresh (import_at 0) or mid-run with optimizer state; mup's gauge, then STP, then rescaling
    for gauges in ([None], ["stp", "rescaling"], ["rescaling", "mup"]):
        out, weights, imp = compare(kind, gauges, import_at, decoupled_wd=decoupled_wd)
        assert out <= 1e-12 and weights <= 1e-12, (gauges, out, weights)
        if gauges == [None]:
            assert out == 0.0  # mup's own gauge: the same arithmetic, bit for bit


def test_weight_decay_conventions_are_recognised():
    # decoupled_wd=False (mup's default): lr*wd fixed per tensor = gaugeconv's "independent"
    _, _, imp = compare("adamw", [None], 0, steps=1)
    assert imp.gauged.parameterization.wd_scaling == "independent" and not imp.notes
    assert all(s.wd_const == 1.0 for s in imp.gauged.parameterization.specs.values())
    _, _, imp = compare("sgd", [None], 0, steps=1)
    assert imp.gauged.parameterization.wd_scaling == "independent" and not imp.notes
    # decoupled_wd=True: the stored wd is the same everywhere. For AdamW that is "coupled"
    # except on the MuReadout weight (its multiplier 1/width_mult makes the effective decay
    # width_mult times larger) and "independent" except on the hidden matrix: either way one
    # tensor needs a constant, which the import carries and reports
    for scaling, odd, const in (("coupled", "out.weight", 128 / N0),
                                ("independent", "l2.weight", N0 / 128)):
        model = make(128)
        opt = mu_optimizer("adamw", model.parameters(), True, **HYPER["adamw"])
        imp = from_mup(model, opt, wd_scaling=scaling)
        specs = imp.gauged.parameterization.specs
        assert [s.name for s in specs.values() if s.wd_const != 1.0] == [odd]
        assert specs[odd].wd_const == pytest.approx(const) and odd in imp.notes[0]
    assert from_mup(model, opt).gauged.parameterization.wd_scaling == "independent"  # tie


def test_constants_do_not_scale_with_width():
    consts = {}
    for n in (128, 512):
        _, _, imp = compare("sgd", [None], 0, steps=1, n=n, weight_decay=0.0)
        consts[n] = {k: (s.lr_const, s.init_const) for k, s in
                     imp.gauged.parameterization.specs.items()}
    for name in consts[128]:
        assert consts[128][name] == pytest.approx(consts[512][name], rel=1e-12), name
    # MuSGD's readin lr at base width 32 with d_in 64: lambda = eta * n/n0 = eta * alpha^2/d_in
    # * (d_in/n0), a constant 2 (the "2x off" that needed constants); biases: 1/n0
    assert consts[128]["l1.weight"][0] == pytest.approx(D_IN / N0)
    assert consts[128]["l1.bias"][0] == pytest.approx(1 / N0)
    # mup's readout: stored std 1/sqrt(3 n0) times 1/width_mult = muP's 1/n up to sqrt(n0/3)
    assert consts[128]["out.weight"][1] == pytest.approx((N0 / 3) ** 0.5)
    assert consts[128]["l2.weight"][1] == pytest.approx(3**-0.5)


def test_rebuilt_optimizer_has_mups_groups():
    for kind in ("sgd", "adam", "adamw"):
        model = make(128)
        opt = mu_optimizer(kind, model.parameters(), **HYPER[kind])
        imp = from_mup(model, opt)
        for g in (imp.make_optimizer(type(opt)), imp.optimizer):
            for group in g.param_groups:
                (p,) = group["params"]
                src = next(s for s in opt.param_groups if any(q is p for q in s["params"]))
                for key in ("lr", "weight_decay", "eps", "momentum", "betas"):
                    if key in src:
                        assert group[key] == pytest.approx(src[key], rel=1e-14), (kind, key)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_tied_shared_readout(kind):
    out, weights, imp = compare(kind, ["stp", "rescaling"], 2, steps=6, cls=MupTied)
    assert out <= 1e-12 and weights <= 1e-12
    spec = imp.gauged.parameterization.specs["emb.weight"]
    assert spec.role is gc.Role.READOUT and spec.builtin == pytest.approx(2.0 * N0 / 128)


def test_eps_conventions_negative_control():
    # gaugeconv's effective eps differs from mup's stored eps only on the readout weight; with
    # a large eps the trajectories then differ measurably, with "stored" they do not
    out, _, imp = compare("adam", ["stp"], 0, eps_convention="effective", eps=1e-4)
    assert out > 1e-6
    assert all(s.eps_const == 1.0 for s in imp.gauged.parameterization.specs.values())
    out, _, imp = compare("adam", ["stp"], 0, eps_convention="stored", eps=1e-4)
    assert out <= 1e-12
    assert imp.gauged.parameterization.specs["out.weight"].eps_const == pytest.approx(128 / N0)


def test_zero_readout_and_no_bias():
    model = make(64, bias=False, zero=True)
    imp = from_mup(model, mup.MuAdam(model.parameters(), lr=1e-2), "stp")
    assert imp.gauged.parameterization.specs["out.weight"].init == "zeros"
    assert set(imp.gauged.parameterization.specs) == {"l1.weight", "l2.weight", "out.weight"}


def test_refusals_name_the_tensor():
    model = MupMLP(64).double()
    with pytest.raises(gc.GaugeError, match="l1.weight.*set_base_shapes"):
        from_mup(model, torch.optim.Adam(model.parameters()))
    model = make(64)
    other = nn.Linear(3, 3)
    opt = torch.optim.Adam([*model.parameters(), other.weight], lr=1e-2)
    with pytest.raises(gc.GaugeError, match="not a parameter of the model"):
        from_mup(model, opt)
    with pytest.raises(gc.GaugeError, match="eps_convention"):
        from_mup(model, mup.MuAdam(model.parameters(), lr=1e-2), eps_convention="raw")


def test_mid_run_with_a_scheduler():
    def warmup(k):
        return min(1.0, (k + 1) / 4)

    a, b = make(128), make(128)
    opt_a = mu_optimizer("adamw", a.parameters(), **HYPER["adamw"])
    opt_b = mu_optimizer("adamw", b.parameters(), **HYPER["adamw"])
    sched_a = torch.optim.lr_scheduler.LambdaLR(opt_a, warmup)
    sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, warmup)
    worst = 0.0
    for t, (x, y) in enumerate(batches(7)):
        if t == 2:  # recreate the schedule on the new optimizer: groups carry initial_lr
            imp = from_mup(b, opt_b, "stp")
            opt_b = imp.optimizer
            sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, warmup,
                                                        last_epoch=sched_b.last_epoch - 1)
        train_step(a, opt_a, x, y)
        train_step(b, opt_b, x, y)
        sched_a.step()
        sched_b.step()
        with torch.no_grad():
            worst = max(worst, rel(a(x), b(x)))
    assert worst <= 1e-12
    # constants come from initial_lr, not the warmed-up lr: the same as a fresh import's
    c = make(128)
    fresh = from_mup(c, mu_optimizer("adamw", c.parameters(), **HYPER["adamw"]))
    for name, spec in imp.gauged.parameterization.specs.items():
        assert spec.lr_const == pytest.approx(fresh.gauged.parameterization.specs[name].lr_const)
