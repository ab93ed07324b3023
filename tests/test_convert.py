"""Live conversion: group laws, optimizer state, schedulers, and refusals that change nothing."""

import copy

import pytest
import torch
from torch import nn

from gaugeconv import (
    ConversionError,
    Custom,
    GaugedModel,
    GaugeError,
    Parameterization,
    Richness,
    RichnessError,
    RoleError,
    UnknownGaugeError,
    UnsupportedOptimizerError,
    build_mlp,
)


def ulps(a, b):
    """Distance in units in the last place between two float32 tensors of equal sign."""
    ia, ib = a.view(torch.int32).long(), b.view(torch.int32).long()
    return (ia - ib).abs().max().item()


def trained(make_mlp, gauge="stp", optimizer="adamw", steps=3, **kw):
    gm = make_mlp(gauge=gauge, optimizer="adam" if optimizer != "sgd" else "sgd", **kw)
    opt = gm.make_optimizer(optimizer, 0.05, weight_decay=0.01)
    x = torch.randn(32, 16, dtype=gm.module.layers[0].weight.dtype)
    for _ in range(steps):
        opt.zero_grad()
        gm.module(x).pow(2).mean().backward()
        opt.step()
    return gm, opt, x


@pytest.mark.parametrize("width,dtype", [(96, torch.float32), (64, torch.float32)])
def test_group_laws(make_mlp, width, dtype):
    gm, opt, _ = trained(make_mlp, width=width, dtype=dtype, richness=0.25)
    stored0 = {k: v.detach().clone() for k, v in gm.module.named_parameters()}
    state0 = copy.deepcopy(opt.state_dict())
    custom = Custom(lambda spec: 1.7 if spec.role.value == "hidden" else 0.3)

    a_b_c, a_c = copy.deepcopy((gm, opt)), copy.deepcopy((gm, opt))
    a_b_c[0].convert("mup", optimizer=a_b_c[1])
    a_b_c[0].convert(custom, optimizer=a_b_c[1])
    a_c[0].convert(custom, optimizer=a_c[1])
    for (k, p), (_, q) in zip(a_b_c[0].module.named_parameters(), a_c[0].module.named_parameters()):
        assert ulps(p.detach(), q.detach()) <= 1, k
    for ga, gb in zip(a_b_c[1].param_groups, a_c[1].param_groups):
        assert ga["lr"] == pytest.approx(gb["lr"], rel=1e-14)
        assert ga["eps"] == pytest.approx(gb["eps"], rel=1e-14)

    # A -> B -> A restores the stored tensors within 1 ulp and the optimizer's numbers
    gm.convert("rescaling", optimizer=opt)
    gm.convert("stp", optimizer=opt)
    for k, p in gm.module.named_parameters():
        assert ulps(p.detach(), stored0[k]) <= 1, k
    state1 = opt.state_dict()
    for i, g in enumerate(state1["param_groups"]):
        for key in ("lr", "eps", "weight_decay"):
            assert g[key] == pytest.approx(state0["param_groups"][i][key], rel=1e-14)
    for pid, st in state1["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert ulps(st[key], state0["state"][pid][key]) <= 1


def test_power_of_two_round_trip_is_bit_identical(make_mlp):
    gm, opt, _ = trained(make_mlp, width=256, dtype=torch.float32, richness=0.5)
    ref_p = {k: v.detach().clone() for k, v in gm.module.named_parameters()}
    ref_s = copy.deepcopy(opt.state_dict())
    gm.convert("mup", optimizer=opt)
    assert any(not torch.equal(p, ref_p[k]) for k, p in gm.module.named_parameters())
    gm.convert("rescaling", optimizer=opt)
    gm.convert("stp", optimizer=opt)
    for k, p in gm.module.named_parameters():
        assert torch.equal(p.detach(), ref_p[k]), k
    new_s = opt.state_dict()
    for pid, st in new_s["state"].items():
        for key, val in st.items():
            assert torch.equal(val, ref_s["state"][pid][key]), key
    assert [g["lr"] for g in new_s["param_groups"]] == [g["lr"] for g in ref_s["param_groups"]]


def test_conversion_keeps_the_function_and_state_dict_keys(make_mlp):
    gm, opt, x = trained(make_mlp, width=80)
    keys = list(gm.module.state_dict())
    before = gm.module(x)
    gm.convert("mup", optimizer=opt)
    assert list(gm.module.state_dict()) == keys
    assert torch.allclose(gm.module(x), before, rtol=1e-13, atol=1e-15)
    assert gm.hooks.active == 3  # Adam-type muP: every layer has a multiplier != 1
    assert gm.gauge.name == "mup"


def test_schedulers_are_converted(make_mlp):
    gm = make_mlp(gauge="stp", optimizer="sgd", width=64)
    opt = gm.make_optimizer("sgd", 0.1, momentum=0.9)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k)
    step = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)
    for _ in range(2):
        opt.step()
        lam.step()
        step.step()
    before = [g["lr"] for g in opt.param_groups]
    scales = gm.convert("rescaling", optimizer=opt, schedulers=[lam, step])
    for g, b, name in zip(opt.param_groups, before, [n for n, _ in gm.named_parameters()]):
        assert g["lr"] == pytest.approx(b / scales[name] ** 2, rel=1e-14)
        assert g["initial_lr"] * scales[name] ** 2 == pytest.approx(0.1 * gm.plans[name]
                                                                    .target.lr_factor, rel=1e-14)
    assert lam.base_lrs == [g["initial_lr"] for g in opt.param_groups]
    lam.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [b * 0.125 for b in lam.base_lrs], rel=1e-14)


def snapshot(gm, opt, *scheds):
    return (
        {k: v.clone() for k, v in gm.module.state_dict().items()},
        copy.deepcopy(opt.state_dict()) if opt is not None else None,
        dict(gm.multipliers),
        gm.hooks.active,
        [copy.deepcopy(s.state_dict()) for s in scheds],
    )


def assert_same(a, b):
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    if a[1] is not None:
        assert a[1]["param_groups"] == b[1]["param_groups"]
        for pid in a[1]["state"]:
            for key, val in a[1]["state"][pid].items():
                assert torch.equal(val, b[1]["state"][pid][key])
    assert a[2:4] == b[2:4]
    assert [str(s) for s in a[4]] == [str(s) for s in b[4]]


def test_mixed_group_is_split_and_the_run_stays_exact(make_mlp):
    """A group whose tensors get different factors s is split (one piece per s), not refused."""
    gm = make_mlp(gauge="stp", optimizer="sgd")
    ref = copy.deepcopy(gm)
    opts = [torch.optim.SGD(m.module.parameters(), lr=0.1, momentum=0.9) for m in (gm, ref)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1 / (1 + k)) for o in opts]
    x = torch.randn(4, 16, dtype=torch.float64)
    for step in range(4):
        if step == 2:
            gm.convert("mup", optimizer=opts[0], schedulers=[scheds[0]])
            assert len(opts[0].param_groups) > 1 and len(scheds[0].lr_lambdas) == len(
                opts[0].param_groups)
        for m, o, sch in zip((gm, ref), opts, scheds):
            o.zero_grad()
            m.module(x).pow(2).sum().backward()
            o.step()
            sch.step()
    for k, w in gm.effective_parameters().items():
        assert torch.allclose(w, ref.effective_parameters()[k], rtol=1e-13, atol=1e-15), k
    assert any(not torch.equal(w, p0) for w, p0 in zip(  # negative control: training moved
        gm.effective_parameters().values(), make_mlp(gauge="stp").effective_parameters().values()))


class AdamWithEMA(torch.optim.AdamW):
    """An AdamW subclass that keeps one more state tensor (no rule for it)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].setdefault("ema", p.detach().clone()).lerp_(p, 0.1)


def test_unknown_state_and_bad_schedulers_are_refused_and_nothing_changes(make_mlp):
    gm = make_mlp(gauge="stp", optimizer="adam")
    opt = gm.make_optimizer(AdamWithEMA, 0.01)
    gm.module(torch.randn(4, 16, dtype=torch.float64)).sum().backward()
    opt.step()
    snap = snapshot(gm, opt)
    with pytest.raises(UnsupportedOptimizerError, match="state entry 'ema' of layers.0.weight"):
        gm.convert("mup", optimizer=opt)
    assert_same(snap, snapshot(gm, opt))

    gm2 = make_mlp(gauge="stp", optimizer="adam")
    opt2 = gm2.make_optimizer("adamw", 0.01)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, 10, eta_min=1e-5)
    snap = snapshot(gm2, opt2, cos)
    with pytest.raises(ConversionError, match="CosineAnnealingLR has an absolute eta_min"):
        gm2.convert("mup", optimizer=opt2, schedulers=[cos])
    assert_same(snap, snapshot(gm2, opt2, cos))
    with pytest.raises(UnknownGaugeError, match="unknown gauge 'mupp'"):
        gm2.convert("mupp", optimizer=opt2)
    assert_same(snap, snapshot(gm2, opt2, cos))


def test_unsupported_optimizer_and_family_mismatch(make_mlp):
    gm = make_mlp(gauge="mup", optimizer="adam")
    with pytest.raises(UnsupportedOptimizerError, match="'RAdam' is not supported"):
        gm.make_optimizer(torch.optim.RAdam, 0.01)
    radam = torch.optim.RAdam(gm.module.parameters(), lr=0.01)
    snap = snapshot(gm, radam)
    with pytest.raises(UnsupportedOptimizerError, match="RAdam"):
        gm.convert("stp", optimizer=radam)
    assert_same(snap, snapshot(gm, radam))
    with pytest.raises(GaugeError, match="SGD is sgd-type but .* adam-type"):
        gm.make_optimizer("sgd", 0.1)
    with pytest.raises(UnsupportedOptimizerError, match="unknown optimizer 'lamb'"):
        gm.make_optimizer("lamb", 0.1)


def test_bad_model_input():
    with pytest.raises(RichnessError, match="r=0.75"):
        build_mlp(4, 2, 8, richness=0.75)
    with pytest.raises(RichnessError, match="gamma=0"):
        build_mlp(4, 2, 8, richness=0.5, gauge="stp", gamma=0)
    with pytest.raises(UnknownGaugeError, match="'standard'"):
        build_mlp(4, 2, 8, gauge="standard")
    gm = build_mlp(4, 2, 8, richness=0.5, gauge="stp")
    module = nn.Sequential(gm.module, nn.Linear(2, 2))  # a parameter nobody gave a role
    specs = [type(s)(f"0.{s.name}", s.role, s.fan_in, s.shape, s.init)
             for s in gm.parameterization.specs.values()]
    with pytest.raises(RoleError, match=r"\['1.weight', '1.bias'\]"):
        GaugedModel(module, Parameterization(specs, Richness(0.5), "mup", "sgd", 8))
    assert not module[0]._forward_pre_hooks  # nothing was attached


def test_gradients_pending_at_conversion_are_scaled(make_mlp):
    gm = make_mlp(gauge="stp", optimizer="sgd", width=64)
    ref = copy.deepcopy(gm)
    opt = gm.make_optimizer("sgd", 0.1)
    ref_opt = ref.make_optimizer("sgd", 0.1)
    x = torch.randn(8, 16, dtype=torch.float64)
    for m in (gm, ref):
        m.module(x).pow(2).sum().backward()
    gm.convert("mup", optimizer=opt)  # between backward and step
    opt.step()
    ref_opt.step()
    for k, w in gm.effective_parameters().items():
        assert torch.allclose(w, ref.effective_parameters()[k], rtol=1e-14, atol=1e-16)
