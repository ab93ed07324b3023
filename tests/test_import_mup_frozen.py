"""Tensors mup's optimizer does not train are taken over frozen (issue 17, item 4).

A tensor left out of the optimizer, or in a group with lr 0, is run by mup (it stays fixed);
the import accepts it: it stays out of (or at lr 0 in) the new optimizer and out of
``make_optimizer``'s, and its constants are those mup's rule gives its kind (from the infshape).
Reference: the real MuAdam / MuSGD run, float64.
"""

from __future__ import annotations

import dataclasses

import mup
import pytest

from gaugeconv.importers import from_mup
from tests.mup_models import batches, follow_mup, make

N = 128
FROZEN = ("l2.weight", "l1.bias")  # a hidden matrix and a vector


def optimizer(kind: str, how: str):
    """MuAdam / MuSGD that do not train FROZEN: left out, or in a group with lr 0."""
    cls = {"adam": mup.MuAdam, "sgd": mup.MuSGD}[kind]
    hyper = ({"lr": 1e-2, "eps": 1e-6, "weight_decay": 1e-2} if kind == "adam"
             else {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3})

    def build(model):
        rest = [p for n, p in model.named_parameters() if n not in FROZEN]
        frozen = [p for n, p in model.named_parameters() if n in FROZEN]
        if how == "left out":
            return cls(rest, **hyper)
        return cls([{"params": frozen, "lr": 0.0}, {"params": rest}], **hyper)

    return build


def rebuilt(imported):
    return imported.make_optimizer(type(imported.optimizer))


def trained_anyway(imported):
    """The negative control: the same rebuild, told nothing is frozen."""
    return rebuilt(dataclasses.replace(imported, frozen=frozenset()))


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("how", ["left out", "lr 0"])
def test_frozen_tensors_follow_mup(kind, how):
    data = list(batches(6))
    build = optimizer(kind, how)
    start = make(N)
    for gauges, import_at, rebuild in (([None], 0, None), (["stp", "rescaling"], 2, None),
                                       (["stp"], 0, rebuilt)):
        run = follow_mup(lambda: make(N), build, data, gauges, import_at, rebuild=rebuild)
        assert run.outputs <= 1e-12 and run.weights <= 1e-12, (gauges, run.outputs, run.weights)
        eff = run.imported.gauged.effective_parameters()
        for name in FROZEN:  # fixed while frozen, in every gauge
            want = dict(start.named_parameters())[name].detach()
            assert (eff[name] - want).abs().max() <= 1e-15 * want.abs().max(), name
    imp = run.imported
    assert imp.frozen == frozenset(FROZEN) and any("l2.weight" in n for n in imp.notes)
    assert not any(n in FROZEN for g in rebuilt(imp).param_groups for n in g["param_names"])
    # negative control: the same rebuild, not told they are frozen, trains them and leaves
    # mup's trajectory
    bad = follow_mup(lambda: make(N), build, data, ["stp"], 0, rebuild=trained_anyway)
    assert bad.outputs > 1e-4


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_frozen_constants_are_mups_rule(kind):
    # the constants of a frozen tensor are those it has when mup trains it
    model, trained = make(N), make(N)
    frozen = from_mup(model, optimizer(kind, "left out")(model)).gauged.parameterization.specs
    hyper = {"lr": 1e-2, "eps": 1e-6, "weight_decay": 1e-2} if kind == "adam" else {
        "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
    cls = {"adam": mup.MuAdam, "sgd": mup.MuSGD}[kind]
    normal = from_mup(trained, cls(trained.parameters(), **hyper)).gauged.parameterization.specs
    for name in FROZEN:
        assert frozen[name].constants == pytest.approx(normal[name].constants, rel=1e-14), name


def test_requires_grad_false_in_a_group_is_a_plain_import():
    # a tensor with requires_grad False inside a group keeps that group's values: torch skips
    # it (no gradient); the import reads its lr like any other
    def build(model):
        model.l2.weight.requires_grad_(False)
        return mup.MuAdam(model.parameters(), lr=1e-2)

    run = follow_mup(lambda: make(N), build, list(batches(5)), ["stp", "rescaling"], 0)
    assert run.outputs <= 1e-12 and run.weights <= 1e-12
    assert run.imported.frozen == frozenset()
    want = make(N).l2.weight.detach()  # fixed (up to the rescaling gauge's rounding)
    have = run.imported.gauged.effective_parameters()["l2.weight"]
    assert (have - want).abs().max() <= 1e-15 * want.abs().max()
