"""The reference MLP: structure, init statistics, multipliers that leave the module alone.

Most tests here are about the materialized form (stored tensors, multipliers in the forward);
the plain form's own are at the end.
"""

import copy
import math

import pytest
import torch

from gaugeconv import Role, build_mlp


def test_roles_from_structure():
    gm = build_mlp(12, 3, 40, depth=4, width_mults=[1, 0.5, 2], richness=0.5, gauge="mup")
    roles = {n: (p.spec.role, p.spec.fan_in) for n, p in gm.plans.items()}
    assert roles == {
        "layers.0.weight": (Role.READIN, 12), "layers.0.bias": (Role.READIN, 1),
        "layers.1.weight": (Role.HIDDEN, 40), "layers.1.bias": (Role.READIN, 1),
        "layers.2.weight": (Role.HIDDEN, 20), "layers.2.bias": (Role.READIN, 1),
        "layers.3.weight": (Role.READOUT, 80), "layers.3.bias": (Role.FIXED, 1),
    }
    assert [tuple(layer.weight.shape) for layer in gm.module.layers] == [
        (40, 12), (20, 40), (80, 20), (3, 80)]


@pytest.mark.parametrize("gauge", ["stp", "mup", "rescaling"])
@pytest.mark.parametrize("r", [0.0, 0.5])
def test_effective_init_variance_matches_the_table(gauge, r):
    n, d = 1024, 64
    gm = build_mlp(d, 10, n, richness=r, gauge=gauge, dtype=torch.float64, seed=3,
                   form="materialized")
    eff = gm.effective_parameters()
    alpha = n**r
    expected = {"layers.0.weight": 1 / d, "layers.1.weight": 1 / n,
                "layers.2.weight": 1 / (alpha**2 * n)}
    for name, v in expected.items():
        measured = eff[name].pow(2).mean().item()
        assert measured == pytest.approx(v, rel=0.05), name
    assert torch.count_nonzero(eff["layers.0.bias"]) == 0
    # the stored std is sqrt(v)/m
    for name, v in expected.items():
        stored = dict(gm.module.named_parameters())[name].detach()
        m = gm.multipliers[name]
        assert stored.std().item() == pytest.approx(math.sqrt(v) / m, rel=0.05)


def test_same_seed_same_effective_init_in_every_gauge():
    base = build_mlp(64, 10, 256, richness=0.25, gauge="stp", seed=5).effective_parameters()
    for g in ("mup", "rescaling"):
        eff = build_mlp(64, 10, 256, richness=0.25, gauge=g, seed=5,
                        form="materialized").effective_parameters()
        for k in base:
            assert torch.equal(eff[k], base[k]), (g, k)  # 256^0.25 = 4: powers of two


def test_stp_gauge_has_no_hooks_and_hooks_keep_keys():
    stp = build_mlp(8, 2, 16, gauge="stp", richness=0.5, form="materialized")
    mup = build_mlp(8, 2, 16, gauge="mup", richness=0.5, form="materialized")
    assert stp.hooks.active == 0 and mup.hooks.active > 0
    assert list(stp.module.state_dict()) == list(mup.module.state_dict())
    assert all(isinstance(p, torch.nn.Parameter) for p in mup.module.parameters())


def test_forward_uses_m_times_w_and_restores_parameters_even_on_error():
    gm = build_mlp(8, 2, 16, gauge="mup", richness=0.5, dtype=torch.float64, form="materialized")
    x = torch.randn(5, 8, dtype=torch.float64)
    eff = gm.effective_parameters()
    h = x
    for i in range(3):
        h = h @ eff[f"layers.{i}.weight"].T + eff[f"layers.{i}.bias"]
        h = torch.tanh(h) if i < 2 else h
    assert torch.allclose(gm.module(x), h, rtol=1e-13)
    before = dict(gm.module.named_parameters())
    with pytest.raises(RuntimeError):
        gm.module(torch.randn(5, 7, dtype=torch.float64))  # wrong input size
    after = dict(gm.module.named_parameters())
    assert all(after[k] is before[k] for k in before)
    assert torch.allclose(gm.module(x), h, rtol=1e-13)


def test_deepcopy_is_independent_and_remove_detaches():
    gm = build_mlp(8, 2, 16, gauge="mup", richness=0.5, dtype=torch.float64, form="materialized")
    x = torch.randn(3, 8, dtype=torch.float64)
    twin = copy.deepcopy(gm)
    assert torch.equal(twin.module(x), gm.module(x))
    twin.convert("rescaling")
    assert torch.allclose(twin.module(x), gm.module(x), rtol=1e-13)
    assert gm.gauge.name == "mup"
    out = gm.module(x)
    gm.remove()
    assert not torch.allclose(gm.module(x), out)


def test_groups_carry_names_and_per_tensor_hyperparameters():
    gm = build_mlp(64, 10, 256, richness=0.5, gauge="mup", optimizer="adam", form="materialized")
    opt = gm.make_optimizer("adamw", 0.01, eps=1e-8, weight_decay=0.1)
    names = [g["param_names"][0] for g in opt.param_groups]
    assert names == [n for n, _ in gm.module.named_parameters()]
    for g in opt.param_groups:
        plan = gm.plans[g["param_names"][0]]
        assert g["lr"] == pytest.approx(0.01)  # muP gauge: one global lr
        assert g["eps"] == pytest.approx(1e-8 * plan.multiplier)
        wd = 0.0 if g["params"][0].ndim < 2 else 0.1 * plan.multiplier
        assert g["weight_decay"] == pytest.approx(wd)
    # an optimizer default that must move with the gauge is written into every group
    opt = gm.make_optimizer("adamw", 0.01)
    assert opt.param_groups[2]["eps"] == pytest.approx(1e-8 / 256)
    assert opt.param_groups[2]["weight_decay"] == pytest.approx(1e-2 / 256)


def test_plain_form_is_a_plain_module_with_the_stp_gauges_groups():
    """The default form: nothing swapped, Parameters hold W, groups are STP's for every gauge."""
    plain = build_mlp(64, 10, 256, richness=0.5, gauge="mup", optimizer="adam")
    stp = build_mlp(64, 10, 256, richness=0.5, gauge="stp", optimizer="adam", form="materialized")
    mat = build_mlp(64, 10, 256, richness=0.5, gauge="mup", optimizer="adam", form="materialized")
    assert plain.form == "plain" and plain.gauge.name == "mup" and plain.hooks.active == 0
    assert all(type(layer) is torch.nn.Linear for layer in plain.module.layers)
    assert all(plain.module.layers[i].weight is plain.module.layers[i]._parameters["weight"]
               for i in range(3))
    assert set(plain.multipliers.values()) == {1.0}  # applied: none
    assert plain.parameterization.multipliers == mat.parameterization.multipliers  # the label
    groups = {k: plain.make_optimizer("adamw", 0.01, eps=1e-8, weight_decay=0.1).param_groups
              for k in range(1)}[0]
    reference = stp.make_optimizer("adamw", 0.01, eps=1e-8, weight_decay=0.1).param_groups
    muP = mat.make_optimizer("adamw", 0.01, eps=1e-8, weight_decay=0.1).param_groups
    keys = ("lr", "eps", "weight_decay", "param_names")
    assert [{k: g[k] for k in keys} for g in groups] == [{k: g[k] for k in keys} for g in reference]
    # negative control: the materialized muP gauge's groups are not STP's (one global lr)
    assert [g["lr"] for g in muP] != [g["lr"] for g in groups]
    # same effective init as the materialized form, bit for bit (power-of-two multipliers)
    for name, w in mat.effective_parameters().items():
        assert torch.equal(plain.effective_parameters()[name], w), name
