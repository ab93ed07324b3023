"""Issue 16: idioms on a plain ``nn.Module`` put into a gauge (``build_mlp`` / ``gaugeconv.attach``).

The companion of tests/hf/test_idioms.py (which explains the outcomes "same", "refused",
"documented") for what needs no transformers model: torch.fx, weight and spectral norm
parametrizations, ``parameters_to_vector``, loops over ``model.parameters()``, optimizers built
by hand, per-sample gradients. The reference is the same MLP in the STP gauge's plain form (a
plain ``ReferenceMLP``, nothing of it changed, same effective init: ``build_mlp`` draws one init
in every gauge and form), trained with the STP gauge's groups. Width 64, Adam-type muP: the
multipliers are 1/16, 1/64 and 1, so the forms agree bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gaugeconv import GaugeError, RoleError, build_mlp
from gaugeconv.clip import clip_grad_norm_ as effective_clip

FORMS = ("plain", "materialized")
LR = 1e-2
X = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(gauge: str = "mup", form: str = "plain", optimizer: str = "adam"):
    return build_mlp(16, 5, 64, depth=3, richness=0.5, gauge=gauge, optimizer=optimizer,
                     dtype=torch.float64, seed=0, form=form)


def pair(form: str, optimizer: str = "adam"):
    """(reference handle, gauged handle): STP plain (a plain module) and muP in ``form``."""
    ref, gauged = mlp("stp", "plain", optimizer), mlp("mup", form, optimizer)
    assert type(ref.module.layers[1]) is nn.Linear  # the reference is a plain module
    assert (gauged.hooks.active > 0) == (form == "materialized")  # negative control
    return ref, gauged


def out(module: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def loss_of(module: nn.Module) -> torch.Tensor:
    return (module(X) - Y).pow(2).mean()


def train(module: nn.Module, optimizer, steps: int = 3) -> torch.Tensor:
    losses = []
    for _ in range(steps):
        loss = loss_of(module)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return torch.stack(losses)


def assert_trains_alike(ref, gauged, steps: int = 3) -> None:
    before = out(gauged.module)
    a = train(ref.module, ref.make_optimizer("adamw", LR, weight_decay=0.01), steps)
    b = train(gauged.module, gauged.make_optimizer("adamw", LR, weight_decay=0.01), steps)
    assert torch.equal(a, b)
    assert torch.equal(out(gauged.module), out(ref.module))
    assert not torch.equal(out(gauged.module), before)


# -- reading and writing module.weight ----------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_own_forward_reads_module_weight(form):
    """``F.linear(x, layer.weight)`` in user code: values and gradients of W."""
    ref, gauged = pair(form)
    grads = []
    for h in (ref, gauged):
        layer = h.module.layers[1]
        y = nn.functional.linear(torch.tanh(h.module.layers[0](X)), layer.weight, layer.bias)
        y.pow(2).sum().backward()
        grads.append(layer.weight.grad)
    assert torch.equal(grads[1], grads[0])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("form", FORMS)
def test_polyak_update_between_two_models_in_the_same_form(form):
    """RL target networks: ``tp.data.mul_(1 - tau).add_(tau * p.data)`` over parameters()."""
    ref, gauged = pair(form)
    targets = [mlp("stp", "plain"), mlp("mup", form)]
    for h in (ref, gauged):
        train(h.module, h.make_optimizer("adamw", LR), steps=2)
    for h, target in zip((ref, gauged), targets):
        with torch.no_grad():
            for tp, p in zip(target.module.parameters(), h.module.parameters()):
                tp.data.mul_(0.5).add_(0.5 * p.data)  # linear: the same in stored units
    assert torch.equal(out(targets[1].module), out(targets[0].module))
    assert not torch.equal(out(targets[0].module), out(ref.module))


# -- loops over parameters() that mix models or norms: documented --------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_copying_parameters_from_a_plain_model(form):
    """``for p, q in zip(model.parameters(), plain.parameters()): p.data.copy_(q.data)``."""
    ref, gauged = pair(form)
    donor = mlp("stp", "plain").module  # a plain MLP, given other weights below
    with torch.no_grad():
        for p in donor.parameters():
            p.mul_(1.5)
    for h in (ref, gauged):
        with torch.no_grad():
            for p, q in zip(h.module.parameters(), donor.parameters()):
                p.data.copy_(q.data)
    assert torch.equal(out(ref.module), out(donor))
    if form == "plain":
        assert torch.equal(out(gauged.module), out(donor))
        return
    # documented: parameters() are the stored tensors w = W/m; a plain model's W copied into
    # them is read as m * W. load_state_dict (effective tensors) is the way in.
    assert (out(gauged.module) - out(donor)).abs().max() > 0.1
    gauged.module.load_state_dict(donor.state_dict())
    assert torch.equal(out(gauged.module), out(donor))


@pytest.mark.parametrize("form", FORMS)
def test_parameters_to_vector_and_back(form):
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    ref, gauged = pair(form)
    vectors = [parameters_to_vector(h.module.parameters()) for h in (ref, gauged)]
    for h, v in zip((ref, gauged), vectors):  # the round trip is the identity in both forms
        vector_to_parameters(v * 0.5, h.module.parameters())
    assert torch.equal(out(gauged.module), out(ref.module))
    if form == "plain":
        assert torch.equal(vectors[1], vectors[0])
        return
    # documented: the vector holds stored tensors (the readout's entries are 64 x W), so its norm,
    # a distance between two models or a vector from a plain model mean other things
    assert parameters_to_vector(gauged.module.parameters()).norm() > \
        4 * parameters_to_vector(ref.module.parameters()).norm()


@pytest.mark.parametrize("form", FORMS)
def test_clip_grad_value_over_parameters(form):
    ref, gauged = pair(form)
    for h in (ref, gauged):
        loss_of(h.module).backward()
        torch.nn.utils.clip_grad_value_(h.module.parameters(), 1e-3)
    g = [h.module.layers[2].weight.grad for h in (ref, gauged)]
    assert g[0].abs().max() == 1e-3  # negative control: it clipped
    if form == "plain":
        assert torch.equal(g[1], g[0])
        return
    # documented: the stored gradients (m dL/dW) are clipped, so the effective clip value is
    # 1e-3 / m per tensor; clip by the effective norm instead (gaugeconv.clip)
    assert g[1].abs().max() == pytest.approx(1e-3 * 64)
    for h in (ref, gauged):
        h.module.zero_grad()
        loss_of(h.module).backward()
    torch.nn.utils.clip_grad_norm_(ref.module.parameters(), 1e-3)
    effective_clip(gauged, 1e-3)
    torch.testing.assert_close(gauged.module.layers[2].weight.grad,
                               ref.module.layers[2].weight.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("form", FORMS)
def test_an_optimizer_built_by_hand_over_parameters(form):
    """``torch.optim.SGD(model.parameters(), lr)``: the gauge is in the groups, not the tensors.

    Plain form: a hand-built optimizer trains the plain model (same as plain transformers or
    torch), not the gauge: documented, the gauge's groups come from ``make_optimizer`` /
    ``GaugeOptimizerFactory``. Materialized muP with SGD: one global lr is the gauge's own
    optimizer (THEORY.md section 3, muP: per-tensor lr equal to eta), so it trains the gauge.
    """
    ref, gauged = pair(form, optimizer="sgd")
    plain = mlp("stp", "plain", "sgd")
    by_hand = train(gauged.module, torch.optim.SGD(gauged.module.parameters(), lr=0.5))
    groups = train(ref.module, ref.make_optimizer("sgd", 0.5))
    if form == "plain":
        assert torch.equal(by_hand, train(plain.module, torch.optim.SGD(plain.module.parameters(),
                                                                        lr=0.5)))
        assert not torch.equal(by_hand, groups)  # the gauge's per-tensor lrs were not used
    else:
        assert torch.equal(by_hand, groups)


# -- parametrizations ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_weight_and_spectral_norm_on_a_gauged_linear(form, kind):
    """Plain: forward kept, the optimizer names the parametrization's new tensors (no role yet).

    Materialized: refused before anything changes. torch's parametrize reads ``module.weight``
    (m * w) and would keep what it derives from it in place of the stored tensor. spectral_norm
    registers the read itself (GaugeError naming it); weight_norm makes ``nn.Parameter(read)``
    of it, which torch refuses as a non-leaf (its own ValueError, naming "original1"); removing
    the tensor (the next step) would be a GaugeError too.
    """
    from torch.nn.utils import parametrizations

    ref, gauged = pair(form)
    before = out(ref.module)
    torch.manual_seed(4)  # spectral_norm draws its power-iteration vectors
    getattr(parametrizations, kind)(ref.module.layers[1])
    assert [n for n, _ in ref.module.named_parameters() if "original" in n] != []
    if form == "materialized":
        layer = gauged.module.layers[1]
        error, match = ((GaugeError, "layers.1.weight: registering a read") if kind == "spectral_norm"
                        else (ValueError, "Cannot assign non-leaf Tensor to parameter 'original1'"))
        with pytest.raises(error, match=match):
            getattr(parametrizations, kind)(layer)
        with pytest.raises(GaugeError, match="layers.1.weight: removing a tensor of a materialized"):
            del layer.weight
        assert "weight" in layer._parameters and not hasattr(layer, "parametrizations")
        assert torch.equal(out(gauged.module), before)
        return
    torch.manual_seed(4)
    getattr(parametrizations, kind)(gauged.module.layers[1])
    assert torch.equal(out(gauged.module), out(ref.module))
    if kind == "spectral_norm":
        assert not torch.equal(out(ref.module), before)  # negative control: W / sigma(W)
    with pytest.raises(RoleError, match=r"layers.1.parametrizations.weight.original"):
        gauged.make_optimizer("adamw", LR)


# -- tracing and torch.func ----------------------------------------------------------------------
FLAT = {"return_hidden": False}  # ReferenceMLP.forward's Python flag


class ReadsWeight(nn.Linear):
    """A Linear whose own forward reads ``self.weight`` (as custom layers do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


@pytest.mark.parametrize("form", FORMS)
def test_torch_fx_symbolic_trace(form):
    """Linear's gauged forward traces as F.linear(x, w) * m (m a constant of the gauge): same.
    A forward that reads ``self.weight`` would bake m * w in as a constant: refused."""
    ref, gauged = pair(form)
    traced = torch.fx.symbolic_trace(gauged.module, concrete_args=FLAT)
    assert torch.equal(out(traced), out(ref.module))
    with torch.no_grad():  # the graph module shares the Parameters: a graph, not constants
        gauged.module.layers[2].weight.mul_(2.0)
    assert torch.equal(out(traced), out(gauged.module))
    assert not torch.equal(out(traced), out(ref.module))

    custom = mlp("mup", "plain")
    custom.module.layers[1].__class__ = ReadsWeight
    if form == "materialized":
        custom.materialize()
        with pytest.raises(GaugeError, match="layers.1.weight: torch.fx symbolic tracing"):
            torch.fx.symbolic_trace(custom.module, concrete_args=FLAT)
        return
    traced = torch.fx.symbolic_trace(custom.module, concrete_args=FLAT)
    assert torch.equal(out(traced), out(mlp("stp", "plain").module))


@pytest.mark.parametrize("form", FORMS)
def test_per_sample_gradients_with_vmap_grad_functional_call(form):
    from torch.func import functional_call, grad, vmap

    def per_sample(module):
        params = {k: v.detach() for k, v in module.named_parameters()}

        def loss(p, x, y):
            return (functional_call(module, p, (x[None],)) - y[None]).pow(2).sum()

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, X, Y)

    ref, gauged = pair(form)
    if form == "materialized":
        with pytest.raises(GaugeError, match="layers.0.weight: the slot holds a tensor"):
            per_sample(gauged.module)
        assert torch.equal(out(gauged.module), out(ref.module))  # slots put back
        return
    want, got = per_sample(ref.module), per_sample(gauged.module)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert not torch.equal(want["layers.2.weight"][0], want["layers.2.weight"][1])


@pytest.mark.parametrize("form", FORMS)
def test_training_after_a_module_swap_of_the_same_shape(form):
    """``model.layers[1] = nn.Linear(64, 64)``: the role stays with the place (KeepSpecs)."""
    ref, gauged = pair(form)
    for h in (ref, gauged):
        torch.manual_seed(3)
        h.module.layers[1] = nn.Linear(64, 64, dtype=torch.float64)
    assert_trains_alike(ref, gauged)
