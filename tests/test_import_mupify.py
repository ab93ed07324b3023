"""mupify's conventions (D. Karkada's reference code) in gaugeconv, at its five named points.

The reference below re-derives mupify's per-layer numbers from its definitions (q, activity,
g, lr, init scale) and trains a class-based MLP with explicit layer multipliers; gaugeconv's
import must give the same numbers and the same float64 trajectory.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gaugeconv.importers import from_mupify

D_IN, D_OUT, N = 12, 5, 48
POINTS = ("ntp", "ntp-lr", "mup", "mup-lr", "mfp")


def mupify_numbers(layer_type: str, param: str, d_in: int, width: int):
    """mupify's (multiplier g, lr factor, init scale) of one layer."""
    activity = math.sqrt(width) if param in ("mup", "mfp", "mup-lr") else 1.0
    q = activity**2 / d_in if layer_type in ("readin", "hidden") else 1.0 / d_in
    if param in ("mup-lr", "ntp-lr"):
        return 1.0, q, math.sqrt(q) / activity
    if param == "mup":
        return math.sqrt(q), 1.0, 1.0 / activity
    return math.sqrt(q) / activity, activity**2, 1.0  # mfp, ntp


class Reference(nn.Module):
    """mupify's forward: every layer's output (weight and bias) times its multiplier g."""

    def __init__(self, param: str, seed: int = 0):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(D_IN, N), nn.Linear(N, N), nn.Linear(N, D_OUT)])
        types = ("readin", "hidden", "readout")
        self.numbers = [mupify_numbers(t, param, layer.weight.shape[1], N)
                        for t, layer in zip(types, self.layers)]
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer, (_, _, scale) in zip(self.layers, self.numbers):
                for p in layer.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        self.double()

    def forward(self, x):
        for i, (layer, (g, _, _)) in enumerate(zip(self.layers, self.numbers)):
            x = g * layer(x if i == 0 else torch.tanh(x))
        return x

    def optimizer(self, lr, **kw):
        groups = [{"params": [p], "lr": lr * f} for layer, (_, f, _) in
                  zip(self.layers, self.numbers) for p in layer.parameters()]
        return torch.optim.SGD(groups, lr=lr, **kw)


def plain() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D_IN, N), nn.Tanh(), nn.Linear(N, N), nn.Tanh(),
                         nn.Linear(N, D_OUT)).double()


@pytest.mark.parametrize("param", POINTS)
def test_mupify_numbers_and_trajectory(param):
    ref = Reference(param)
    model = plain()
    hyper = dict(momentum=0.9, weight_decay=1e-3)
    imp = from_mupify(model, param, torch.optim.SGD(model.parameters(), lr=0.1, **hyper))
    plans = imp.gauged.plans
    for i, (g, f, scale) in zip((0, 2, 4), ref.numbers):
        for kind in ("weight", "bias"):
            plan = plans[f"{i}.{kind}"]
            assert plan.multiplier == pytest.approx(g, rel=1e-12)
            assert plan.lr_factor == pytest.approx(f, rel=1e-12)
            assert plan.init_std == pytest.approx(scale, rel=1e-12)
    # mupify's weight decay: the same stored value for every tensor
    assert all(grp["weight_decay"] == pytest.approx(1e-3, rel=1e-14)
               for grp in imp.optimizer.param_groups)
    with torch.no_grad():  # same gauge: the same stored tensors
        for p, q in zip(model.parameters(), ref.parameters()):
            p.copy_(q)
    opt_ref, opt = ref.optimizer(0.1, **hyper), imp.optimizer
    gen = torch.Generator().manual_seed(3)
    worst = 0.0
    for t in range(8):
        if t == 4:  # and convert in mid-run: still the same trajectory
            imp.gauged.convert("stp" if param != "ntp-lr" else "mup", optimizer=opt)
        x = torch.randn(16, D_IN, generator=gen, dtype=torch.float64)
        y = torch.randint(0, D_OUT, (16,), generator=gen)
        for m, o in ((ref, opt_ref), (model, opt)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        with torch.no_grad():
            a, b = ref(x), model(x)
        worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
    assert worst <= 1e-12


def test_bias_conventions_differ_as_documented():
    ours = from_mupify(plain(), "mup", biases="gaugeconv").gauged.plans
    theirs = from_mupify(plain(), "mup", biases="mupify").gauged.plans
    # hidden bias: gaugeconv's step is n times mupify's (mupify's stops learning with width)
    ratio = (ours["2.bias"].target.lr_factor / theirs["2.bias"].target.lr_factor)
    assert ratio == pytest.approx(N)
    assert ours["0.weight"].lr_factor == theirs["0.weight"].lr_factor
    # mupify's biases as gaugeconv biases (readin fan_in 1 / fixed) with constants
    consts = {"0.bias": (1 / D_IN, D_IN**-0.5), "2.bias": (1 / N, N**-0.5), "4.bias": (1 / N, None)}
    for name, (lr_const, init_const) in consts.items():
        mine, ref = ours[name], theirs[name]
        assert mine.target.lr_factor * lr_const == pytest.approx(ref.target.lr_factor, rel=1e-12)
        if init_const is not None:
            assert math.sqrt(mine.target.variance) * init_const == pytest.approx(
                math.sqrt(ref.target.variance), rel=1e-12)
    with pytest.raises(ValueError, match="biases"):
        from_mupify(plain(), "mup", biases="other")
    with pytest.raises(ValueError, match="param"):
        from_mupify(plain(), "sp")
    done = plain()
    done[2]._multiplier = 0.5  # what mupify leaves on a layer (with a replaced forward)
    with pytest.raises(ValueError, match="'2' was already mupified"):
        from_mupify(done, "mup")
