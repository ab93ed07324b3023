"""Writes through a materialized gauge's ``module.weight`` reach the stored tensor, in effective units.

A plain ``nn.Linear`` is the reference: the same write on it and on the gauged module must
leave the two computing the same function; the stored tensor of the gauged one then holds W/m
(the negative control: it is not W, so the write really went through the multiplier).
"""

import pytest
import torch
from torch import nn

from gaugeconv import GaugedModel, GaugeError, Parameterization, Richness, Role, TensorSpec
from gaugeconv.materialized import EffectiveTensor

M = 1 / 8  # the readout multiplier of muP/Adam at width and fan_in 8: a power of two


def _pair(form="materialized"):
    torch.manual_seed(0)
    plain = nn.Linear(8, 8, bias=False, dtype=torch.float64)
    lin = nn.Linear(8, 8, bias=False, dtype=torch.float64)
    lin.load_state_dict(plain.state_dict())
    spec = TensorSpec("weight", Role.READOUT, 8, (8, 8), init="keep")
    GaugedModel(lin, Parameterization([spec], Richness(0.5), "mup", "adam", 8), form=form)
    with torch.no_grad():  # the gauged module starts from the plain one's function
        lin.weight.copy_(plain.weight)
    assert form == "plain" or lin._gaugeconv_m["weight"] == M
    return plain, lin


def _same_function(plain, lin):
    x = torch.randn(4, 8, dtype=torch.float64)
    assert torch.equal(plain(x), lin(x))


WRITES = {
    "copy_": lambda w: w.copy_(torch.full_like(w, 0.25)),
    "normal_": lambda w: w.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1)),
    "mul_": lambda w: w.mul_(2.0),
    "init.zeros_": lambda w: nn.init.zeros_(w),
    "init.orthogonal_": lambda w: nn.init.orthogonal_(w, generator=torch.Generator().manual_seed(2)),
    "init.trunc_normal_": lambda w: nn.init.trunc_normal_(
        w, std=0.02, generator=torch.Generator().manual_seed(3)),
    "data.add_": lambda w: w.data.add_(1.0),
    "data +=": lambda w: w.data.__iadd__(1.0),
    "setitem row": lambda w: w.__setitem__(3, 7.0),
    "view row copy_": lambda w: w[2].copy_(torch.arange(8.0, dtype=torch.float64)),
    "t() slice fill_": lambda w: w.t()[1:3].fill_(-1.0),
    "data =": lambda w: setattr(w, "data", torch.eye(8, dtype=torch.float64)),
    "foreach": lambda w: torch._foreach_mul_([w], 3.0),
}


@pytest.mark.parametrize("name", WRITES)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_writes_reach_the_stored_tensor_in_effective_units(name, mode):
    plain, lin = _pair()
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        WRITES[name](plain.weight)
        w = lin.weight
        assert isinstance(w, EffectiveTensor)
        WRITES[name](w)
    _same_function(plain, lin)
    stored = lin._parameters["weight"].detach()
    assert torch.equal(stored, plain.weight.detach() / M)  # negative control: it is w = W/m
    if plain.weight.detach().any():  # (zeros_: 0/m is 0)
        assert not torch.equal(stored, plain.weight.detach())
    assert torch.equal(w.detach(), plain.weight.detach())  # the snapshot shows the write too


def test_a_write_into_a_trained_leaf_under_autograd_is_refused_like_on_a_plain_model():
    plain, lin = _pair()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        plain.weight.mul_(2.0)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        lin.weight.mul_(2.0)
    _same_function(plain, lin)


def test_plain_form_writes_are_writes_into_the_parameter():
    plain, lin = _pair(form="plain")
    assert type(lin) is nn.Linear and lin.weight is lin._parameters["weight"]
    with torch.no_grad():
        for write in WRITES.values():
            write(plain.weight)
            write(lin.weight)
    _same_function(plain, lin)


def test_flags_hooks_and_gradients_reach_the_parameter():
    plain, lin = _pair()
    x = torch.randn(4, 8, dtype=torch.float64)
    for model in (plain, lin):
        model.weight.requires_grad = False
    assert not lin._parameters["weight"].requires_grad
    for model in (plain, lin):
        model.weight.requires_grad_(True)
    assert lin._parameters["weight"].requires_grad
    mask = torch.zeros(8, 8, dtype=torch.float64)
    mask[:2] = 1.0
    seen = []
    for model in (plain, lin):
        model.weight.register_hook(lambda g: g * mask)
        model.weight.register_hook(lambda g: seen.append(g.clone()))
        model(x).pow(2).sum().backward()
    assert torch.equal(seen[0], seen[1])  # the hook saw the effective gradient dL/dW
    assert torch.equal(lin.weight.grad, plain.weight.grad)  # .grad is dL/dW too
    assert torch.equal(lin._parameters["weight"].grad, plain.weight.grad * M)  # stored: m dL/dW
    assert int((lin.weight.grad[2:] != 0).sum()) == 0  # the mask reached the stored gradient
    lin.weight.grad = None
    assert lin._parameters["weight"].grad is None


def test_state_dict_values_write_through_and_pickle_as_plain_tensors(tmp_path):
    plain, lin = _pair()
    with torch.no_grad():
        for sd in (plain.state_dict(), lin.state_dict()):
            sd["weight"].copy_(torch.full((8, 8), 0.5, dtype=torch.float64))
    _same_function(plain, lin)
    torch.save(lin.state_dict(), tmp_path / "sd.pt")
    loaded = torch.load(tmp_path / "sd.pt", weights_only=True)
    assert type(loaded["weight"]) is torch.Tensor
    assert torch.equal(loaded["weight"], plain.weight.detach())
    kept = lin.state_dict(keep_vars=True)["weight"]
    assert isinstance(kept, EffectiveTensor) and kept.requires_grad


def test_assigning_a_parameter_or_a_foreign_slot_tensor_is_refused_by_name():
    _, lin = _pair()
    before = lin._parameters["weight"]
    with pytest.raises(GaugeError, match="weight: assigning a Parameter"):
        lin.weight = nn.Parameter(torch.zeros(8, 8, dtype=torch.float64))
    assert lin._parameters["weight"] is before
    lin._parameters["weight"] = nn.Parameter(torch.zeros(8, 8, dtype=torch.float64))
    with pytest.raises(GaugeError, match="weight: the slot holds a tensor that gaugeconv did not"):
        lin(torch.randn(2, 8, dtype=torch.float64))


def test_effective_tensors_that_underflow_in_the_gauge_are_refused():
    """Loading effective tensors into a gauge whose w = W/m leaves float16's range is loud."""
    _, lin = _pair()
    lin.half()
    tiny = torch.full((8, 8), 6e-8, dtype=torch.float16)  # a float16 subnormal
    before = lin._parameters["weight"].detach().clone()
    lin._gaugeconv_m["weight"] = 1e6  # an extreme multiplier: W/m underflows to 0
    with pytest.raises(GaugeError, match="weight: 64 entries .* underflow or overflow"):
        lin.load_state_dict({"weight": tiny})
    assert torch.equal(lin._parameters["weight"], before)
    # negative control: the gauge's own multiplier stores the same W without loss
    lin._gaugeconv_m["weight"] = M
    lin.load_state_dict({"weight": torch.full((8, 8), 0.5, dtype=torch.float16)})
    with torch.no_grad():
        assert torch.equal(lin.weight, torch.full((8, 8), 0.5, dtype=torch.float16))
