"""Per-group hyperparameters of a mup optimizer survive ``Imported.make_optimizer`` (issue 17,
item 1): betas, amsgrad, momentum, dampening, nesterov differ per group and are carried per
tensor; what a fresh optimizer cannot express is refused by name. Reference: the real
MuAdam / MuSGD run in float64.
"""

from __future__ import annotations

import mup
import pytest
import torch

import gaugeconv as gc
from gaugeconv.importers import from_mup
from tests.mup_models import batches, follow_mup, make

N = 128


def split(model):
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    return biases, weights


def mu_adam(model):
    biases, weights = split(model)
    return mup.MuAdam([{"params": biases, "betas": (0.5, 0.9)},
                       {"params": weights, "amsgrad": True}],
                      lr=1e-2, eps=1e-6, weight_decay=1e-2)


def mu_sgd(model):
    biases, weights = split(model)
    return mup.MuSGD([{"params": biases, "momentum": 0.5, "dampening": 0.25},
                      {"params": weights, "momentum": 0.9, "nesterov": True}],
                     lr=0.05, momentum=0.0, weight_decay=1e-3)


def rebuilt(cls):
    return lambda imported: imported.make_optimizer(cls)


def defaults_only(cls):
    """The negative control: the optimizer's defaults for every group (the old make_optimizer)."""

    def build(imported):
        hyper = {**imported.hyper, "weight_decay": imported.weight_decay}
        if imported.eps is not None:
            hyper["eps"] = imported.eps
        return imported.gauged.make_optimizer(cls, imported.lr, no_decay=imported.no_decay_rule,
                                              **hyper)

    return build


@pytest.mark.parametrize("make_opt,cls", [(mu_adam, torch.optim.Adam),
                                          (mu_sgd, torch.optim.SGD)])
def test_make_optimizer_carries_per_group_values(make_opt, cls):
    data = list(batches(6))
    for gauges in ([None], ["stp", "rescaling"], ["rescaling", "mup"]):
        run = follow_mup(lambda: make(N), make_opt, data, gauges, 0, rebuild=rebuilt(cls))
        assert run.outputs <= 1e-12 and run.weights <= 1e-12, (gauges, run.outputs, run.weights)
    groups = {g["param_names"][0]: g for g in run.imported.make_optimizer(cls).param_groups}
    if cls is torch.optim.Adam:
        assert groups["l1.bias"]["betas"] == (0.5, 0.9) and not groups["l1.bias"]["amsgrad"]
        assert groups["l2.weight"]["betas"] == (0.9, 0.999) and groups["l2.weight"]["amsgrad"]
    else:
        assert (groups["l1.bias"]["momentum"], groups["l1.bias"]["dampening"]) == (0.5, 0.25)
        assert groups["l2.weight"]["nesterov"] and groups["l2.weight"]["momentum"] == 0.9
    # negative control: every group at the optimizer's defaults leaves mup's trajectory
    bad = follow_mup(lambda: make(N), make_opt, data, ["stp"], 0, rebuild=defaults_only(cls))
    assert bad.outputs > 1e-4


def test_overrides_set_a_key_for_every_tensor():
    model = make(N)
    imp = from_mup(model, mu_adam(model))
    opt = imp.make_optimizer(torch.optim.Adam, betas=(0.8, 0.99))
    assert {g["betas"] for g in opt.param_groups} == {(0.8, 0.99)}
    assert {g["amsgrad"] for g in opt.param_groups} == {False, True}  # not overridden: carried
    merged = imp.make_optimizer(torch.optim.Adam, merge=True)
    assert len(merged.param_groups) < len(opt.param_groups)
    for group in merged.param_groups:  # merging keeps the per-group values apart
        assert len({n.endswith("bias") for n in group["param_names"]}) == 1


def test_what_cannot_be_carried_is_refused_by_name():
    model = make(N)
    imp = from_mup(model, mu_adam(model))
    # NAdam has no amsgrad: the weights' group set it, so a NAdam rebuild is refused
    with pytest.raises(gc.GaugeError, match="NAdam takes no 'amsgrad'.*l1.weight"):
        imp.make_optimizer(torch.optim.NAdam)
    # torch Adam with decoupled weight decay in one group only: one mode per fresh optimizer
    model = make(N)
    biases, weights = split(model)
    opt = mup.MuAdam([{"params": biases, "decoupled_weight_decay": True}, {"params": weights}],
                     lr=1e-2, weight_decay=1e-2)
    imp = from_mup(model, opt)
    with pytest.raises(gc.GaugeError, match="decoupled_weight_decay.*l1.bias"):
        imp.make_optimizer(torch.optim.Adam)
    # ... while imported.optimizer, a copy of mup's groups, still follows mup exactly
    data = list(batches(4))

    def mixed(m):
        b, w = split(m)
        return mup.MuAdam([{"params": b, "decoupled_weight_decay": True}, {"params": w}],
                          lr=1e-2, weight_decay=1e-2)

    run = follow_mup(lambda: make(N), mixed, data, ["stp"], 0)
    assert run.outputs <= 1e-12 and run.weights <= 1e-12
    # Adagrad's initial_accumulator_value is scaled by the gauge: a per-group value is refused
    model = make(N)
    biases, weights = split(model)
    opt = mup.MuAdam([{"params": biases, "initial_accumulator_value": 0.5}, {"params": weights}],
                     impl=torch.optim.Adagrad, lr=1e-2)
    imp = from_mup(model, opt)
    with pytest.raises(gc.GaugeError, match="initial_accumulator_value.*l1.bias"):
        imp.make_optimizer(torch.optim.Adagrad)


def test_a_group_eps_is_kept_in_either_eps_convention():
    # a hand-built group with its own eps: "stored" reproduces it exactly; "effective" applies
    # the group's eps to dL/dW (eps_const = its ratio to the base eps), not the base eps
    def build(m):
        b, w = split(m)
        return mup.MuAdam([{"params": b, "eps": 1e-3}, {"params": w}], lr=1e-2, eps=1e-6)

    model = make(N)
    specs = from_mup(model, build(model), eps_convention="effective").gauged.parameterization.specs
    assert specs["l1.bias"].eps_const == pytest.approx(1e3)
    assert specs["l1.weight"].eps_const == 1.0
    run = follow_mup(lambda: make(N), build, list(batches(5)), ["stp"], 0)
    assert run.outputs <= 1e-12 and run.weights <= 1e-12
