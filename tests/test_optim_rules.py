"""Section 4's rules, checked on real torch optimizers over random gauge factors s."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gaugeconv import (
    DEFAULT_REGISTRY,
    Custom,
    GaugedModel,
    OptimizerRule,
    Parameterization,
    Richness,
    Role,
    TensorSpec,
    UnsupportedOptimizerError,
)

OPTIMIZERS = {
    "SGD": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "SGD-nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adam": dict(lr=0.01, eps=1e-3, weight_decay=0.01, amsgrad=True),
    "Adam-decoupled": dict(lr=0.01, eps=1e-3, weight_decay=0.1, decoupled_weight_decay=True),
    "AdamW": dict(lr=0.01, eps=1e-3, weight_decay=0.1),
    "Adamax": dict(lr=0.01, eps=1e-3, weight_decay=0.01),
    "NAdam": dict(lr=0.01, eps=1e-3, weight_decay=0.01),
    "Adagrad": dict(lr=0.05, eps=1e-3, weight_decay=0.01, initial_accumulator_value=0.1),
    "RMSprop": dict(lr=0.01, eps=1e-3, weight_decay=0.01, momentum=0.5, centered=True),
}

scales = st.floats(-10, 10).map(lambda e: 2.0**e)


def _family(cls_name):
    return DEFAULT_REGISTRY.by_name(cls_name).family


def _model(name, w0, gauge):
    cls_name = name.split("-")[0]
    lin = nn.Linear(w0.shape[1], w0.shape[0], bias=False, dtype=torch.float64)
    spec = TensorSpec("weight", Role.HIDDEN, w0.shape[1], tuple(w0.shape), init="keep")
    param = Parameterization([spec], Richness(0.5), "stp", _family(cls_name), w0.shape[1])
    gm = GaugedModel(lin, param.with_gauge(gauge), form="materialized")
    with torch.no_grad():
        lin._parameters["weight"].copy_(w0 / gm.multipliers["weight"])  # the stored tensor
    return gm, getattr(torch.optim, cls_name)


def _trajectory(name, s, convert_at, steps=6, drop=None):
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    hyper = dict(OPTIMIZERS[name])
    lr = hyper.pop("lr")
    direct = convert_at is None
    gm, cls = _model(name, w0, Custom({"weight": s}) if direct else "stp")
    rule = gm.rule_for(cls)
    rule = rule.without(drop) if drop else rule
    opt = gm.make_optimizer(cls, lr, no_decay=lambda n, p: False, rule=rule, **hyper)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    traj = []
    for step in range(steps):
        if step == convert_at:
            gm.convert(Custom({"weight": s}), optimizer=opt, schedulers=[sched], rule=rule)
        opt.zero_grad()
        out = gm.module(x)
        loss = (torch.tanh(out) * t).sum() + 0.1 * (out**2).sum()
        loss.backward()
        opt.step()
        sched.step()
        traj.append(gm.effective_parameters()["weight"])
    return torch.stack(traj)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(OPTIMIZERS)), s=scales, convert_at=st.sampled_from([None, 0, 3]))
def test_effective_trajectory_is_gauge_invariant(name, s, convert_at):
    ref = _trajectory(name, 1.0, None)
    got = _trajectory(name, s, convert_at)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    assert err <= 1e-12, (name, s, convert_at, err)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_powers_of_two_are_bit_identical(name):
    ref = _trajectory(name, 1.0, None)
    for s in (0.125, 8.0):
        assert torch.equal(_trajectory(name, s, None), ref)
        assert torch.equal(_trajectory(name, s, 2), ref)


@pytest.mark.parametrize("name,drop", [("SGD", "lr"), ("AdamW", "lr"), ("AdamW", "eps"),
                                       ("Adagrad", "eps")])
@pytest.mark.parametrize("convert_at", [None, 3])
def test_a_broken_rule_is_detected(name, drop, convert_at):
    """Negative control: the same comparison with one rule left out must fail."""
    ref = _trajectory(name, 1.0, None)
    got = _trajectory(name, 64.0, convert_at, drop=drop)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    assert err > 1e-6, (name, drop, err)


@given(h=st.fixed_dictionaries({"lr": st.floats(1e-5, 1), "eps": st.floats(1e-12, 1e-3),
                                 "weight_decay": st.just(0.0) | st.floats(1e-8, 0.5)}),
       s1=st.floats(1e-3, 1e3), s2=st.floats(1e-3, 1e3),
       name=st.sampled_from(["SGD", "Adam", "AdamW", "Adagrad"]))
def test_hyperparameter_rules_compose_and_invert(h, s1, s2, name):
    rule = DEFAULT_REGISTRY.by_name(name)
    two = rule.scaled_hypers({**h, **rule.scaled_hypers(h, s1)}, s2)
    one = rule.scaled_hypers(h, s1 * s2)
    back = rule.scaled_hypers({**h, **rule.scaled_hypers(h, s1)}, 1 / s1)
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-12, abs=0)
        assert back[key] == pytest.approx(h[key], rel=1e-12, abs=0)


def test_rule_powers_are_those_of_section_4():
    sgd, adam, adamw = (DEFAULT_REGISTRY.by_name(n) for n in ("SGD", "Adam", "AdamW"))
    assert sgd.hyper_powers({})["lr"] == -2 and sgd.hyper_powers({})["weight_decay"] == 2
    assert adam.hyper_powers({})["lr"] == -1 and adam.hyper_powers({})["eps"] == 1
    assert adam.hyper_powers({})["weight_decay"] == 2  # coupled
    assert adam.hyper_powers({"decoupled_weight_decay": True})["weight_decay"] == 1
    assert adamw.hyper_powers({})["weight_decay"] == 1
    assert adam.state_powers == {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}
    assert sgd.state_powers == {"momentum_buffer": 1}


@pytest.mark.parametrize("cls", [torch.optim.RAdam, torch.optim.Adadelta, torch.optim.LBFGS,
                                 torch.optim.Rprop])
def test_unsupported_optimizers_are_refused_by_name(cls):
    with pytest.raises(UnsupportedOptimizerError, match=cls.__name__):
        DEFAULT_REGISTRY.rule_for(cls)


class SignSGD(torch.optim.Optimizer):
    """A sign method with momentum (Lion-like), written the way users write one."""

    def __init__(self, params, lr=1e-3, beta=0.9, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                buf.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(buf), alpha=-group["lr"])


def test_registry_extends_to_a_declared_optimizer():
    with pytest.raises(UnsupportedOptimizerError, match="'SignSGD' is not supported"):
        DEFAULT_REGISTRY.rule_for(SignSGD)
    rule = OptimizerRule("SignSGD", ("SignSGD",), degree=0, state_powers={"exp_avg": 1},
                         weight_decay="decoupled")
    registry = DEFAULT_REGISTRY.extended(rule)
    assert registry.rule_for(SignSGD) is rule

    def run(s, convert_at):
        w0 = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
        lin = nn.Linear(4, 3, bias=False, dtype=torch.float64)
        spec = TensorSpec("weight", Role.HIDDEN, 4, init="keep")
        gm = GaugedModel(lin, Parameterization([spec], Richness(0.5), "stp", "adam", 4), registry)
        lin.weight.data.copy_(w0)
        opt = gm.make_optimizer(SignSGD, 0.01, weight_decay=0.1, no_decay=lambda n, p: False)
        x = torch.linspace(-2, 2, 20, dtype=torch.float64).reshape(5, 4)
        for step in range(5):
            if step == convert_at:
                gm.convert(Custom({"weight": s}), optimizer=opt)
            opt.zero_grad()
            torch.sin(lin(x)).sum().backward()
            opt.step()
        return gm.effective_parameters()["weight"]

    ref = run(1.0, None)
    got = run(math.pi, 2)
    assert torch.allclose(got, ref, rtol=1e-13, atol=0)
