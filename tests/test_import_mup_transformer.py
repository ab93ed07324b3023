"""mup's own example Transformer, imported exactly (issue 17, item 3).

Its attention keeps nn.MultiheadAttention's bare ``in_proj_weight`` / ``in_proj_bias`` and
``bias_k`` / ``bias_v``; its position table is a bare Parameter. No module rule covers them: the
importer takes their roles from mup's infshapes, as MuAdam/MuSGD take their learning rates.
Reference: the real MuAdam / MuSGD run of the same model (float64).
"""

from __future__ import annotations

import mup
import pytest
import torch
from torch import nn

import gaugeconv as gc
from gaugeconv.importers import from_mup
from tests.mup_models import T0, follow_mup, make_transformer, token_batches

N = 64  # width_mult 4 over the base T0 = 16

OPTIMIZERS = {
    "adam": lambda m: mup.MuAdam(m.parameters(), lr=3e-3, eps=1e-7, weight_decay=1e-3),
    "adamw": lambda m: mup.MuAdamW(m.parameters(), lr=3e-3, eps=1e-7, weight_decay=1e-2),
    "sgd": lambda m: mup.MuSGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
}


def test_bare_tensors_take_their_roles_from_infshape():
    model = make_transformer(N)
    imp = from_mup(model, OPTIMIZERS["adam"](model))
    specs = imp.gauged.parameterization.specs
    attn = "layers.0.self_attn."
    # THEORY.md section 1: two width dimensions hidden (fan-in = dimension 1), one readin
    assert (specs[attn + "in_proj_weight"].role, specs[attn + "in_proj_weight"].fan_in) == (
        gc.Role.HIDDEN, N)
    for name in (attn + "in_proj_bias", attn + "bias_k", attn + "bias_v", "pos"):
        assert (specs[name].role, specs[name].fan_in) == (gc.Role.READIN, 1), name
    assert specs["decoder.weight"].role is gc.Role.READOUT
    assert specs["decoder.bias"].role is gc.Role.FIXED
    # and the constants are those of their kind: in_proj_weight's lr_const is the base fan-in
    # (MuAdam's eta / width_mult = the table's eta / fan_in * n0), as out_proj's
    assert specs[attn + "in_proj_weight"].lr_const == pytest.approx(T0)
    assert specs[attn + "out_proj.weight"].lr_const == pytest.approx(T0)
    assert specs["pos"].lr_const == pytest.approx(1.0)


@pytest.mark.parametrize("kind,tied", [("adam", False), ("adam", True), ("adamw", False),
                                       ("sgd", False)])
def test_example_transformer_follows_mup(kind, tied):
    data = list(token_batches(7))

    def model():
        return make_transformer(N, tied)

    for import_at, gauges in ((0, [None]), (2, ["stp", "rescaling"]), (2, ["rescaling", "mup"])):
        run = follow_mup(model, OPTIMIZERS[kind], data, gauges, import_at)
        assert run.outputs <= 1e-12 and run.weights <= 1e-12, (gauges, run.outputs, run.weights)
        if gauges == [None]:
            assert run.outputs == 0.0 and run.weights == 0.0  # mup's gauge: mup's arithmetic
    # the weights did move: the bare tensors are trained, not just carried
    imp = run.imported
    fresh = make_transformer(N, tied)
    eff = imp.gauged.effective_parameters()
    for name in ("layers.0.self_attn.in_proj_weight", "layers.0.self_attn.bias_k", "pos"):
        assert not torch.equal(eff[name], dict(fresh.named_parameters())[name].detach()), name


def test_negative_control_a_vector_like_in_proj_lr_is_seen():
    # give one bare matrix the lr MuAdam gives vector-like tensors (width_mult = 4 times
    # larger): the comparison must see it
    data = list(token_batches(5))
    name = "layers.0.self_attn.in_proj_weight"

    def wrong(imported):
        for group in imported.optimizer.param_groups:
            if group["param_names"] == [name]:
                group["lr"] *= N / T0
        return imported.optimizer

    run = follow_mup(lambda: make_transformer(N), OPTIMIZERS["adam"], data, ["stp"], 0,
                     rebuild=wrong)
    assert run.outputs > 1e-6


def test_more_than_two_width_dimensions_is_refused_by_name():
    class Cube(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.lin = nn.Linear(n, n)
            self.cube = nn.Parameter(torch.zeros(n, n, n))
            self.out = mup.MuReadout(n, 3)

    model = Cube(16)
    mup.set_base_shapes(model, Cube(4), delta=Cube(8))
    with pytest.raises(gc.GaugeError, match="'cube' has 3 width dimensions"):
        from_mup(model, torch.optim.Adam(model.parameters(), lr=1e-3))
