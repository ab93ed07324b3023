"""Writes through a gauged module's effective attribute are refused, never silently lost."""

import pytest
import torch
from torch import nn

from gaugeconv import GaugedModel, Parameterization, Richness, Role, TensorSpec


def _gauged(gauge):
    torch.manual_seed(0)
    lin = nn.Linear(8, 8, bias=False, dtype=torch.float64)
    spec = TensorSpec("weight", Role.READOUT, 8, (8, 8), init="keep")  # m = 8^-1/2 in muP
    GaugedModel(lin, Parameterization([spec], Richness(0.5), gauge, "sgd", 8))
    return lin


@pytest.mark.parametrize("write", [
    lambda w: w.copy_(torch.zeros_like(w)),
    lambda w: w.normal_(),
    lambda w: w.mul_(2.0),
])
def test_in_place_write_under_no_grad_raises_in_a_gauge(write):
    lin = _gauged("mup")
    assert lin._parameters["weight"] is not None and type(lin).__name__ != "Linear"
    before = lin._parameters["weight"].detach().clone()
    with torch.no_grad(), pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        write(lin.weight)
    assert torch.equal(lin._parameters["weight"], before)  # nothing changed, loudly


def test_stp_gauge_writes_reach_the_parameter():
    """Negative control: in STP gauge nothing is wrapped, so the same write lands."""
    lin = _gauged("stp")
    with torch.no_grad():
        lin.weight.copy_(torch.zeros(8, 8, dtype=torch.float64))
    assert torch.equal(lin._parameters["weight"], torch.zeros(8, 8, dtype=torch.float64))


def test_reads_under_no_grad_compute_the_same_function():
    lin = _gauged("mup")
    x = torch.randn(4, 8, dtype=torch.float64)
    with torch.no_grad():
        a = lin(x)
    b = lin(x).detach()
    assert torch.equal(a, b)
    m = lin._gaugeconv_m["weight"]
    assert m != 1.0
    assert torch.equal(a, x @ (lin._parameters["weight"].detach() * m).T)
    # the stored tensor alone is another function (the multiplier is really applied)
    assert not torch.allclose(a, x @ lin._parameters["weight"].detach().T)


def test_effective_tensors_that_underflow_in_the_gauge_are_refused():
    """Loading effective tensors into a gauge whose w = W/m leaves float16's range is loud."""
    lin = _gauged("mup").half()
    m = lin._gaugeconv_m["weight"]
    tiny = torch.full((8, 8), 6e-8, dtype=torch.float16)  # a float16 subnormal
    before = lin._parameters["weight"].detach().clone()
    lin._gaugeconv_m["weight"] = 1e6  # an extreme multiplier: W/m underflows to 0
    with pytest.raises(Exception, match="weight: 64 entries .* underflow or overflow"):
        lin.load_state_dict({"weight": tiny})
    assert torch.equal(lin._parameters["weight"], before)
    # negative control: the gauge's own multiplier stores the same W without loss
    lin._gaugeconv_m["weight"] = m
    lin.load_state_dict({"weight": torch.full((8, 8), 0.5, dtype=torch.float16)})
    with torch.no_grad():
        assert torch.equal(lin.weight, torch.full((8, 8), 0.5, dtype=torch.float16))
