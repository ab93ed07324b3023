"""Issue 16: the idioms users combine with gauged Hugging Face models, in both forms.

Every test applies one idiom to a reference model (plain transformers, same seed, no gauge) and
to a gauged one (muP, richness 1/2) in each form, and asserts one of three outcomes:

* "same": the function equals the reference's. Where the idiom trains, both take the same
  optimizer steps: the gauged model with its own gauge's optimizer (``GaugeOptimizerFactory``),
  the reference with the STP gauge's groups of the same richness, applied to the plain
  reference after the idiom (THEORY.md section 4: both have the same effective dynamics). The
  models are float64 at width 64, so every muP multiplier is a power of two and the forms agree
  bit for bit (``torch.equal``) wherever the idiom is deterministic;
* "refused": a GaugeError (or torch's/transformers' own error) naming the tensor;
* "documented": the materialized form behaves differently and no code can see it happen; the
  test measures the difference and shows the remedy. README's table "idioms and what they do in
  each form" lists these.

The plain form (the default) must give "same" for every idiom. Each test has a negative control
where the assertion could pass trivially (the idiom really changed the function, the model
really is materialized). Plain ``nn.Module`` idioms with ``gaugeconv.attach`` (torch.fx, weight
and spectral norm, ``parameters_to_vector``...) are in tests/test_idioms_core.py.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import gaugeconv.hf as gh
from gaugeconv import GaugeError, RoleError
from tests.hf.tiny import VOCAB, batch

FORMS = ("plain", "materialized")
WIDTH = 64  # every muP multiplier at this width (1/64, 1/128) is a power of two
LR = 1e-2
X = batch("llama", n=2, length=8)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- models --------------------------------------------------------------------------------------
def llama(tied: bool = False, seed: int = 0, dtype: torch.dtype = torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=32, tie_word_embeddings=tied, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(dtype)


def gpt2(seed: int = 0, dtype: torch.dtype = torch.float64):
    """Tied embeddings (wte is also the lm_head) and transformers' Conv1D."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=WIDTH, n_layer=1, n_head=4, vocab_size=VOCAB, n_positions=32,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg).to(dtype)


def gauged(model: nn.Module, form: str, **config) -> nn.Module:
    return gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", form=form, **config))


def pair(form: str, build=llama, **kw):
    """(reference, gauged): the same model from the same seed, without and with the gauge."""
    model = gauged(build(**kw), form)
    assert gh.form_of(model) == form
    # negative control for every "same": the materialized form really holds w = W/m
    assert (gh.get_gauged(model).hooks.active > 0) == (form == "materialized")
    return build(**kw), model


def logits(model: nn.Module, x=None) -> torch.Tensor:
    x = X if x is None else x
    with torch.no_grad():
        return model(input_ids=x["input_ids"]).logits


def reference_optimizer(ref: nn.Module, **config) -> torch.optim.Optimizer:
    """The STP gauge's groups (richness 1/2) on the plain reference, roles as the model is now."""
    gh.apply_gauge(ref, gh.GaugeConfig(richness=0.5, gauge="stp", **config))
    return gh.GaugeOptimizerFactory()(ref, "adamw", lr=LR, weight_decay=0.01)


def gauge_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return gh.GaugeOptimizerFactory()(model, "adamw", lr=LR, weight_decay=0.01)


def train(model: nn.Module, optimizer, steps: int = 3, forward=None) -> torch.Tensor:
    forward = model if forward is None else forward
    losses = []
    for _ in range(steps):
        loss = forward(**X).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return torch.stack(losses)


def assert_trains_alike(ref: nn.Module, model: nn.Module, steps: int = 3, **ref_config) -> None:
    """Same losses and same function after ``steps`` optimizer steps, bit for bit."""
    before = logits(model)
    assert torch.equal(before, logits(ref))
    ref_losses = train(ref, reference_optimizer(ref, **ref_config), steps)
    losses = train(model, gauge_optimizer(model), steps)
    assert torch.equal(losses, ref_losses), (losses, ref_losses)
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(model), before)  # negative control: training moved it


def stored(module: nn.Module, name: str = "weight") -> torch.Tensor:
    return module._parameters[name].detach()


# -- EMA helpers ---------------------------------------------------------------------------------
# timm cannot be imported here: ``timm.layers`` imports torchvision, whose PyPI wheels do not
# work with this torch. These are timm 1.0.31's update loops (timm/utils/model_ema.py), verbatim
# but for the class around them: ModelEmaV2._update (lines 118-126) and ModelEmaV3.apply_update_,
# apply_update_no_buffers_ and _foreach_lerp_ (lines 285-341; float64 tensors, so no stochastic
# rounding). Both start from ``deepcopy(model)`` put in eval mode (their __init__).
def timm_ema_v2_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    update_fn = lambda e, m: decay * e + (1. - decay) * m  # noqa: E731 (timm's own)
    with torch.no_grad():
        for ema_v, model_v in zip(ema.state_dict().values(), model.state_dict().values()):
            ema_v.copy_(update_fn(ema_v, model_v))


def _foreach_lerp_(ema_values, model_values, weight):
    same_dtype = all(e.dtype == m.dtype for e, m in zip(ema_values, model_values))
    if same_dtype and hasattr(torch, "_foreach_lerp_"):
        torch._foreach_lerp_(ema_values, model_values, weight=weight)
    else:
        torch._foreach_mul_(ema_values, scalar=1. - weight)
        torch._foreach_add_(ema_values, model_values, alpha=weight)


@torch.no_grad()
def timm_ema_v3_update(ema: nn.Module, model: nn.Module, decay: float, foreach: bool = True,
                       exclude_buffers: bool = False) -> None:
    if exclude_buffers:  # apply_update_no_buffers_
        ema_params, model_params = list(ema.parameters()), list(model.parameters())
        if foreach:
            _foreach_lerp_(ema_params, model_params, weight=1. - decay)
        else:
            for ema_p, model_p in zip(ema_params, model_params):
                ema_p.lerp_(model_p.to(dtype=ema_p.dtype), weight=1. - decay)
        for ema_b, model_b in zip(ema.buffers(), model.buffers()):
            ema_b.copy_(model_b)
        return
    if foreach:  # apply_update_
        ema_lerp_values, model_lerp_values = [], []
        for ema_v, model_v in zip(ema.state_dict().values(), model.state_dict().values()):
            if ema_v.is_floating_point():
                ema_lerp_values.append(ema_v)
                model_lerp_values.append(model_v)
            else:
                ema_v.copy_(model_v)
        _foreach_lerp_(ema_lerp_values, model_lerp_values, weight=1. - decay)
    else:
        for ema_v, model_v in zip(ema.state_dict().values(), model.state_dict().values()):
            if ema_v.is_floating_point():
                ema_v.lerp_(model_v.to(dtype=ema_v.dtype), weight=1. - decay)
            else:
                ema_v.copy_(model_v)


def _ema_run(model: nn.Module, optimizer, update, steps: int = 3) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    for _ in range(steps):
        train(model, optimizer, steps=1)
        update(ema, model)
    return ema


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2-tied", "llama"])
def test_timm_model_ema_v2(form, build):
    """copy_ into ``state_dict().values()``; GPT-2's tied wte/lm_head is two keys of one tensor."""
    ref, model = pair(form, build)
    start = logits(ref)
    update = lambda e, m: timm_ema_v2_update(e, m, 0.5)  # noqa: E731
    ref_ema = _ema_run(ref, reference_optimizer(ref), update)
    ema = _ema_run(model, gauge_optimizer(model), update)
    assert torch.equal(logits(ema), logits(ref_ema))
    assert not torch.equal(logits(ref_ema), start)  # negative controls: the EMA moved,
    assert not torch.equal(logits(ref_ema), logits(ref))  # and it is not the model itself


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ["foreach", "loop", "no-buffers"])
def test_timm_model_ema_v3(form, mode):
    ref, model = pair(form, gpt2)
    start = logits(ref)
    kw = {"foreach": mode != "loop", "exclude_buffers": mode == "no-buffers"}
    update = lambda e, m: timm_ema_v3_update(e, m, 0.5, **kw)  # noqa: E731
    ref_ema = _ema_run(ref, reference_optimizer(ref), update)
    ema = _ema_run(model, gauge_optimizer(model), update)
    assert torch.equal(logits(ema), logits(ref_ema))
    assert not torch.equal(logits(ref_ema), start)
    assert not torch.equal(logits(ref_ema), logits(ref))


@pytest.mark.parametrize("form", FORMS)
def test_torch_swa_averaged_model_with_ema_multi_avg_fn(form):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ref, model = pair(form)
    start = logits(ref)
    outs = []
    for m, opt in ((ref, reference_optimizer(ref)), (model, gauge_optimizer(model))):
        averaged = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.5))
        for _ in range(3):
            train(m, opt, steps=1)
            averaged.update_parameters(m)
        outs.append(logits(averaged.module))
    assert torch.equal(outs[1], outs[0])
    assert not torch.equal(outs[0], start) and not torch.equal(outs[0], logits(ref))


# -- init helpers --------------------------------------------------------------------------------
INITS = {
    "zeros_": lambda w: nn.init.zeros_(w),
    "normal_": lambda w: nn.init.normal_(w, std=0.05),  # passes the tensor by keyword
    "uniform_": lambda w: nn.init.uniform_(w, -0.1, 0.1),  # keyword
    "constant_": lambda w: nn.init.constant_(w, 0.01),  # keyword
    "kaiming_uniform_": lambda w: nn.init.kaiming_uniform_(w, a=5 ** 0.5),  # keyword
    "xavier_normal_": lambda w: nn.init.xavier_normal_(w),
    "trunc_normal_": lambda w: nn.init.trunc_normal_(w, std=0.02),
    "orthogonal_": lambda w: nn.init.orthogonal_(w),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("init", INITS)
def test_nn_init_on_a_weight_at_top_level(form, init):
    """``nn.init.zeros_(model.lm_head.weight)`` outside no_grad, on trained leaves, global RNG."""
    ref, model = pair(form)
    before = logits(ref)
    for m in (ref, model):
        for module in (m.lm_head, m.model.layers[0].mlp.up_proj):
            torch.manual_seed(5)
            INITS[init](module.weight)
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), before)  # negative control: the init changed W
    assert_trains_alike(ref, model, steps=2)


@pytest.mark.parametrize("form", FORMS)
def test_model_apply_init_weights(form):
    """HF's own re-initialisation: ``model.apply(model._init_weights)`` (transformers.initialization)."""
    ref, model = pair(form)
    before = logits(ref)
    for m in (ref, model):
        torch.manual_seed(5)
        m.apply(m._init_weights)
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), before)
    assert_trains_alike(ref, model, steps=2)


@pytest.mark.parametrize("form", FORMS)
def test_init_weights_skips_loaded_weights_of_a_from_pretrained_model(form, tmp_path):
    """transformers marks loaded tensors ``_is_hf_initialized``; its init functions skip them."""
    from transformers import AutoModelForCausalLM

    llama(seed=3).save_pretrained(tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    model = gauged(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64), form)
    before = logits(ref)
    for m in (ref, model):
        torch.manual_seed(5)
        m.apply(m._init_weights)
    assert torch.equal(logits(ref), before)  # loaded weights kept
    assert torch.equal(logits(model), before)
    # negative control: without the mark, the same call re-draws them
    for m in (ref, model):
        del m.lm_head._parameters["weight"]._is_hf_initialized
        torch.manual_seed(5)
        m.apply(m._init_weights)
    assert not torch.equal(logits(ref), before)
    assert torch.equal(logits(model), logits(ref))


# -- writes, flags, hooks ------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_writes_inside_inference_mode_and_no_grad(form, mode):
    ref, model = pair(form)
    before = logits(ref)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    for m in (ref, model):
        with ctx():
            m.lm_head.weight.mul_(2.0)
            m.model.layers[0].self_attn.q_proj.weight[:4].add_(0.5)
            m.model.layers[0].mlp.down_proj.weight.data.div_(3.0)
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), before)
    assert_trains_alike(ref, model, steps=2)


@pytest.mark.parametrize("form", FORMS)
def test_copy_into_state_dict_values(form):
    """``model.state_dict()[k].copy_(v)``: the values alias the tensors, as on a plain model."""
    ref, model = pair(form)
    donor = llama(seed=9).state_dict()
    before = logits(ref)
    for m in (ref, model):
        sd = m.state_dict()
        with torch.no_grad():
            for key in ("lm_head.weight", "model.layers.0.mlp.down_proj.weight",
                        "model.layers.0.self_attn.k_proj.weight"):
                sd[key].copy_(donor[key])
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), before)
    assert_trains_alike(ref, model, steps=2)


@pytest.mark.parametrize("form", FORMS)
def test_a_held_state_dict_follows_the_optimizer(form, tmp_path):
    """``sd = model.state_dict()`` taken before training, saved after: the trained tensors."""
    ref, model = pair(form)
    held = [ref.state_dict(), model.state_dict()]
    assert_trains_alike(ref, model, steps=2)
    for i, sd in enumerate(held):
        torch.save(sd, tmp_path / f"{i}.pt")
    saved = [torch.load(tmp_path / f"{i}.pt", weights_only=True) for i in range(2)]
    for key, value in saved[0].items():
        assert torch.equal(saved[1][key], value), key
        assert torch.equal(value, ref.state_dict()[key])  # the trained values, not the initial
    assert not torch.equal(saved[0]["lm_head.weight"], llama().lm_head.weight.detach())


@pytest.mark.parametrize("form", FORMS)
def test_state_dict_keep_vars_flags_and_writes(form):
    ref, model = pair(form)
    for m in (ref, model):
        sd = m.state_dict(keep_vars=True)
        assert all(v.requires_grad for v in sd.values())
        sd["lm_head.weight"].requires_grad_(False)
        with torch.no_grad():
            sd["model.layers.0.mlp.up_proj.weight"].mul_(0.5)
    assert not model.lm_head._parameters["weight"].requires_grad  # the flag reached the Parameter
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), logits(llama()))  # negative control: the write landed
    assert_trains_alike(ref, model, steps=2)
    assert torch.equal(ref.lm_head.weight, llama().lm_head.weight)  # negative control: frozen


@pytest.mark.parametrize("form", FORMS)
def test_freeze_all_then_unfreeze_the_head(form):
    ref, model = pair(form)
    for m in (ref, model):
        for p in m.parameters():
            p.requires_grad = False
        m.lm_head.weight.requires_grad = True
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    untouched = llama().model.layers[0].mlp.up_proj.weight
    assert_trains_alike(ref, model)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, untouched)  # frozen stayed


@pytest.mark.parametrize("form", FORMS)
def test_gradient_mask_hook_on_a_tied_embedding(form):
    """``wte.weight.register_hook(mask)``: only the first rows of the tied wte/lm_head learn."""
    ref, model = pair(form, gpt2)
    mask = torch.zeros(VOCAB, 1, dtype=torch.float64)
    mask[:10] = 1.0
    for m in (ref, model):
        m.transformer.wte.weight.register_hook(lambda g: g * mask)
        m(**X).loss.backward()
    grad = model.transformer.wte.weight.grad
    assert torch.equal(grad, ref.transformer.wte.weight.grad)
    assert not grad[10:].any()  # the masked rows got no gradient,
    assert grad[:10].any()  # negative control: the others did
    for m in (ref, model):
        m.zero_grad()
    assert_trains_alike(ref, model)


# -- assignment and ties -------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_assigning_a_new_parameter(form):
    """``lm_head.weight = nn.Parameter(W)``: plain same; materialized refused, model unchanged."""
    ref, model = pair(form)
    w = llama(seed=9).lm_head.weight.detach().clone()
    ref.lm_head.weight = nn.Parameter(w.clone())
    if form == "materialized":
        before = stored(model.lm_head)
        with pytest.raises(GaugeError, match="lm_head.weight: assigning a Parameter"):
            model.lm_head.weight = nn.Parameter(w.clone())
        assert model.lm_head._parameters["weight"] is not None
        assert torch.equal(stored(model.lm_head), before)  # the model is as it was
        assert torch.equal(logits(model), logits(llama()))
        return
    model.lm_head.weight = nn.Parameter(w.clone())
    assert not torch.equal(logits(ref), logits(llama()))
    assert_trains_alike(ref, model)


@pytest.mark.parametrize("form", FORMS)
def test_manual_tie_of_an_untied_llama(form):
    """``lm_head.weight = embed_tokens.weight``: roles re-derived for one tensor with two uses."""
    ref, model = pair(form)
    ref.lm_head.weight = ref.model.embed_tokens.weight
    if form == "materialized":
        with pytest.raises(GaugeError, match="lm_head.weight: assigning a Parameter"):
            model.lm_head.weight = model.model.embed_tokens.weight
        assert torch.equal(logits(model), logits(llama()))
        return
    model.lm_head.weight = model.model.embed_tokens.weight
    assert not torch.equal(logits(ref), logits(llama()))
    assert_trains_alike(ref, model)
    roles = {r["name"]: r for r in gh.describe_roles(model)}
    assert roles["model.embed_tokens.weight"]["uses"] == ["model.embed_tokens.weight",
                                                          "lm_head.weight"]
    assert roles["model.embed_tokens.weight"]["role"] == "readout"  # tied_role's default


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama-untied", "gpt2-tied"])
def test_tie_weights(form, build):
    """transformers' ``tie_weights()`` (get_parameter, then setattr): a no-op on both models."""
    ref, model = pair(form, build)
    for m in (ref, model):
        m.tie_weights()
    assert isinstance(model.lm_head.weight, nn.Parameter)  # as get_parameter wants it
    tied = model.lm_head._parameters["weight"] is model.get_input_embeddings()._parameters["weight"]
    assert tied == (build is gpt2)
    assert_trains_alike(ref, model)


@pytest.mark.parametrize("form", FORMS)
def test_resize_token_embeddings_of_a_tied_gpt2(form):
    """The embedding is resized in place (``weight.data = ...``), then re-tied (tie_weights)."""
    ref, model = pair(form, gpt2)
    for m in (ref, model):
        torch.manual_seed(3)
        m.resize_token_embeddings(VOCAB + 3, mean_resizing=False)
    assert model.config.vocab_size == VOCAB + 3
    assert model.lm_head._parameters["weight"] is model.transformer.wte._parameters["weight"]
    assert model.lm_head.weight.shape[0] == VOCAB + 3
    assert_trains_alike(ref, model)


@pytest.mark.parametrize("form", FORMS)
def test_tying_a_plain_module_to_a_gauged_weight(form):
    """``embed_tokens.weight = lm_head.weight`` (the other direction) and ``nn.Parameter(read)``."""
    ref, model = pair(form)
    for m in (ref, model):
        with torch.no_grad():
            m.lm_head.weight.mul_(0.5)
    if form == "materialized":
        # the read of a gauged tensor is m * w, not the stored Parameter: refused by name
        for assign in (lambda: setattr(model.model.embed_tokens, "weight", model.lm_head.weight),
                       lambda: setattr(nn.Linear(2, 2), "weight", nn.Parameter(model.lm_head.weight))):
            with torch.no_grad(), pytest.raises(GaugeError, match="lm_head.weight: registering"):
                assign()
        assert torch.equal(logits(model), logits(ref))  # as it was
        return
    for m in (ref, model):
        m.model.embed_tokens.weight = m.lm_head.weight
    assert not torch.equal(logits(ref), logits(llama()))
    assert_trains_alike(ref, model)


@pytest.mark.parametrize("form", FORMS)
def test_load_state_dict_assign(form):
    """``load_state_dict(sd, assign=True)`` puts new Parameters in; the optimizer takes them."""
    ref, model = pair(form)
    donor = llama(seed=9).state_dict()
    for m in (ref, model):
        m.load_state_dict({k: v.clone() for k, v in donor.items()}, assign=True)
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), logits(llama()))
    assert_trains_alike(ref, model)


# -- torch.func ----------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_functional_call_with_the_state_dict(form):
    ref, model = pair(form)
    want = torch.func.functional_call(ref, ref.state_dict(), (X["input_ids"],)).logits
    if form == "materialized":
        with pytest.raises(GaugeError, match="q_proj.weight: the slot holds a tensor"):
            torch.func.functional_call(model, model.state_dict(), (X["input_ids"],))
        assert torch.equal(logits(model), logits(ref))  # functional_call put the slots back
        return
    got = torch.func.functional_call(model, model.state_dict(), (X["input_ids"],)).logits
    assert torch.equal(got, want)
    other = torch.func.functional_call(model, llama(seed=9).state_dict(), (X["input_ids"],))
    assert not torch.equal(other.logits, want)  # negative control: the dict is what computes


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_per_sample_gradients_with_vmap_grad_functional_call(form):
    from torch.func import functional_call, grad, vmap

    def per_sample(m):
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p, ids):
            return functional_call(m, p, (ids[None],), {"labels": ids[None]}).loss

        return vmap(grad(loss), in_dims=(None, 0))(params, X["input_ids"])

    ref, model = pair(form)
    if form == "materialized":
        with pytest.raises(GaugeError, match="the slot holds a tensor that gaugeconv did not"):
            per_sample(model)
        return
    want, got = per_sample(ref), per_sample(model)
    assert torch.equal(got["lm_head.weight"], want["lm_head.weight"])
    assert not torch.equal(want["lm_head.weight"][0], want["lm_head.weight"][1])


# -- accelerate loading --------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("how", ["load_checkpoint_in_model", "load_checkpoint_and_dispatch"])
def test_accelerate_loading_into_a_gauged_model(form, how, tmp_path):
    from accelerate import load_checkpoint_and_dispatch
    from accelerate.utils import load_checkpoint_in_model

    llama(seed=11).save_pretrained(tmp_path)

    def load(m):
        if how == "load_checkpoint_in_model":
            load_checkpoint_in_model(m, str(tmp_path), device_map={"": "cpu"})
            return m
        return load_checkpoint_and_dispatch(m, str(tmp_path), device_map="auto")

    ref, model = pair(form)
    ref = load(ref)
    assert torch.equal(logits(ref), logits(llama(seed=11)))
    if form == "materialized":
        # accelerate writes the checkpoint's tensors into the slots (set_module_tensor_to_device);
        # they are refused at the first use, by name. The slots hold them then: the model must
        # be loaded again (in the plain form, or with load_state_dict)
        with pytest.raises(GaugeError, match="the slot holds a tensor that gaugeconv did not"):
            logits(load(model))
        return
    model = load(model)
    assert torch.equal(logits(model), logits(ref))
    assert_trains_alike(ref, model)


# -- peft ----------------------------------------------------------------------------------------
def _lora(model: nn.Module, init=True):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(7)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                     init_lora_weights=init)
    return get_peft_model(model, cfg)


@pytest.mark.parametrize("form", FORMS)
def test_peft_merge_and_unload_on_a_model_gauged_before_get_peft_model(form):
    """peft's own ``merge_and_unload`` (not gaugeconv's), then the merged model trains on."""
    ref, model = pair(form)
    merged = []
    for m, make in ((ref, reference_optimizer), (model, gauge_optimizer)):
        peft_model = _lora(m)
        train(peft_model, make(peft_model), steps=2)
        merged.append(peft_model.merge_and_unload())
        for p in merged[-1].parameters():  # peft froze the base model
            p.requires_grad_(True)
    ref, model = merged
    assert gh.form_of(model) == form
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), logits(llama()))  # negative control: LoRA learned
    assert_trains_alike(ref, model, steps=2)


@pytest.mark.parametrize("form", FORMS)
def test_peft_pissa_initialisation_on_a_model_gauged_before(form):
    """``init_lora_weights="pissa"`` rewrites the base weight (W - A B) through ``.data``."""
    ref, model = pair(form, dtype=torch.float32)  # peft's PiSSA wants float32 or narrower
    before = logits(ref)
    ref, model = _lora(ref, init="pissa"), _lora(model, init="pissa")
    base = ref.base_model.model.model.layers[0].mlp.up_proj.base_layer.weight
    assert not torch.equal(base, llama(dtype=torch.float32).model.layers[0].mlp.up_proj.weight)
    assert torch.equal(logits(model), logits(ref))
    assert (logits(ref) - before).abs().max() < 1e-4  # PiSSA keeps the function (in float32)
    losses = [train(m, make(m), steps=2) for m, make in ((ref, reference_optimizer),
                                                            (model, gauge_optimizer))]
    assert torch.equal(losses[1], losses[0])
    assert torch.equal(logits(model), logits(ref))


# -- module replacement and resizing -------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_replacing_the_lm_head_with_a_new_linear(form):
    ref, model = pair(form)
    for m in (ref, model):
        torch.manual_seed(3)
        m.lm_head = nn.Linear(WIDTH, VOCAB, bias=False, dtype=torch.float64)
    assert not torch.equal(logits(ref), logits(llama()))
    assert_trains_alike(ref, model)


@pytest.mark.parametrize("form", FORMS)
def test_resize_token_embeddings_of_an_untied_llama(form):
    """New rows in embed_tokens and lm_head; the new lm_head gets its group's lr (not the old)."""
    ref, model = pair(form)
    for m in (ref, model):
        torch.manual_seed(3)
        m.resize_token_embeddings(VOCAB + 3, mean_resizing=False)
    assert model.lm_head.weight.shape[0] == VOCAB + 3
    assert_trains_alike(ref, model)


@pytest.mark.parametrize("form", FORMS)
def test_depth_up_scaling_with_a_deep_copied_layer(form):
    ref, model = pair(form)
    for m in (ref, model):
        m.model.layers.append(copy.deepcopy(m.model.layers[0]))
        m.model.layers[1].self_attn.layer_idx = 1
        m.config.num_hidden_layers += 1
    assert not torch.equal(logits(ref), logits(llama()))
    assert_trains_alike(ref, model)
    names = [n for n, _ in model.named_parameters()]
    assert "model.layers.1.mlp.up_proj.weight" in names


@pytest.mark.parametrize("form", FORMS)
def test_appending_a_layer_without_updating_the_config_is_refused(form):
    """The twin has no layer 1: the optimizer names the tensors (negative control of the above)."""
    _, model = pair(form)
    model.model.layers.append(copy.deepcopy(model.model.layers[0]))
    with pytest.raises(RoleError, match="model.layers.1"):
        gauge_optimizer(model)


@pytest.mark.parametrize("form", FORMS)
def test_weight_norm_on_a_linear_of_the_model(form):
    """New tensors (g, v) without a role: the optimizer names them; giving their roles (apply_gauge
    again with role_overrides, the function kept) makes the plain form train like the reference.
    The materialized form refuses the parametrization itself (tests/test_idioms_core.py)."""
    from torch.nn.utils.parametrizations import weight_norm

    roles = {"*.original0": "readin", "*.original1": "hidden"}
    ref, model = pair(form)
    weight_norm(ref.model.layers[0].mlp.up_proj)
    if form == "materialized":
        with pytest.raises(ValueError, match="original1"):
            weight_norm(model.model.layers[0].mlp.up_proj)
        assert torch.equal(logits(model), logits(ref))
        return
    weight_norm(model.model.layers[0].mlp.up_proj)
    assert torch.equal(logits(model), logits(ref))
    with pytest.raises(RoleError, match=r"up_proj.parametrizations.weight.original0"):
        gauge_optimizer(model)
    gauged(model, form, role_overrides=roles)
    assert_trains_alike(ref, model, role_overrides=roles)


# -- copies and pickling -------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_deepcopy_trains_like_the_original(form):
    ref, model = pair(form)
    twin = copy.deepcopy(model)
    assert gh.form_of(twin) == form
    assert_trains_alike(ref, twin)
    assert torch.equal(logits(model), logits(llama()))  # negative control: the original stayed


@pytest.mark.parametrize("form", FORMS)
def test_torch_save_of_the_whole_module(form):
    """``torch.save(model)`` (pickling the module object) and ``torch.load(weights_only=False)``."""
    ref, model = pair(form, gpt2)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert gh.form_of(loaded) == form
    assert type(loaded.lm_head).__name__ == type(model.lm_head).__name__
    assert loaded.lm_head._parameters["weight"] is loaded.transformer.wte._parameters["weight"]
    assert_trains_alike(ref, loaded)


# -- quantization --------------------------------------------------------------------------------
def _quantize(m: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(m.float(), {nn.Linear}, dtype=torch.qint8)


def _float_linears(m: nn.Module) -> list[str]:
    return [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]


@pytest.mark.parametrize("form", FORMS)
def test_quantize_dynamic(form):
    ref, model = pair(form)
    x = {"input_ids": X["input_ids"]}
    full = logits(ref.float(), x)
    ref = _quantize(ref)
    want = logits(ref, x)
    assert _float_linears(ref) == []
    assert 1e-4 < (want - full).abs().max() < 0.1  # negative control: quantized for real
    if form == "materialized":
        # documented: quantize_dynamic picks modules by exact class (nn.Linear); a gauged Linear's
        # class is a subclass, so it stays float and nothing says so. Quantize the plain form.
        q = _quantize(model)
        gauged_linears = [n for n, mod in q.named_modules() if type(mod).__name__ == "GaugedLinear"]
        assert _float_linears(q) == gauged_linears != []
        assert (logits(q, x) - want).abs().max() > 1e-4
        gh.to_plain(model)
    assert torch.equal(logits(_quantize(model), x), want)


# -- compile, export, tracing --------------------------------------------------------------------
class Logits(nn.Module):
    """Tensors in, tensors out (for tracers): the logits without a cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, use_cache=False).logits


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_training_step(form, backend):
    torch._dynamo.reset()
    ref, model = pair(form)
    before = logits(ref)
    losses = [train(m, make(m), steps=2, forward=torch.compile(m, backend=backend))
              for m, make in ((ref, reference_optimizer), (model, gauge_optimizer))]
    assert torch.equal(losses[1], losses[0])
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), before)


@pytest.mark.parametrize("form", FORMS)
def test_gradient_checkpointing(form):
    ref, model = pair(form)
    for m in (ref, model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # renamed in transformers 5
            m.gradient_checkpointing_enable()
        m.train()
    assert model.is_gradient_checkpointing
    assert_trains_alike(ref, model)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_torch_export(form):
    ref, model = pair(form)
    want = torch.export.export(Logits(ref), (X["input_ids"],)).module()(X["input_ids"])
    program = torch.export.export(Logits(model), (X["input_ids"],))
    assert torch.equal(program.module()(X["input_ids"]), want)
    other = X["input_ids"].flip(1)  # negative control: a graph, not a constant
    assert torch.equal(program.module()(other), Logits(ref)(other))


@pytest.mark.parametrize("form", FORMS)
def test_torch_jit_trace(form):
    ref, model = pair(form)
    traced = [torch.jit.trace(Logits(m), (X["input_ids"],), check_trace=False)
              for m in (ref, model)]
    assert torch.equal(traced[1](X["input_ids"]), traced[0](X["input_ids"]))
    other = X["input_ids"].flip(1)
    assert torch.equal(traced[1](other), logits(ref, {"input_ids": other}))


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_onnx_export_runs_in_onnxruntime(form):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    pytest.importorskip("onnxruntime", reason="running the exported graph needs onnxruntime")
    ref, model = pair(form)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Logits(model.eval()), (X["input_ids"],), dynamo=True)
    got = torch.as_tensor(program(X["input_ids"])[0])
    want = logits(ref)
    # onnxruntime's kernels round differently from torch's
    assert (got - want).abs().max() < 1e-6 * want.abs().max()
    assert (logits(llama(seed=9)) - want).abs().max() > 0.1  # negative control


# -- dtypes, clipping, DDP, generation -----------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_then_train(form):
    ref, model = pair(form)
    for m in (ref, model):
        m.to(torch.bfloat16)
    assert_trains_alike(ref, model, steps=2)


@pytest.mark.parametrize("form", FORMS)
def test_half_then_train(form):
    """``model.half()``: the forward is the same; training is the same in the plain form only."""
    ref, model = pair(form)
    for m in (ref, model):
        m.half()
    assert torch.equal(logits(model), logits(ref))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = gh.GaugeOptimizerFactory()(model, "adamw", lr=LR, eps=1e-3)
    warned = [str(w.message) for w in caught if "float16 tensor(s) carry multipliers" in
              str(w.message)]
    ref_optimizer = reference_optimizer(ref)
    for group in ref_optimizer.param_groups:  # float16's eps: 1e-8 underflows
        group["eps"] = 1e-3
    want, got = train(ref, ref_optimizer), train(model, optimizer)
    if form == "plain":
        assert not warned
        assert torch.equal(got, want)
        assert torch.equal(logits(model), logits(ref))
        return
    # documented (and warned when the optimizer is built): the stored gradients are m = 1/64
    # times the effective ones, and Adam's second moment (m^2 g^2) underflows float16
    assert warned
    assert torch.equal(got[0], want[0]) and (got[1:] - want[1:]).abs().max() > 0.1


@pytest.mark.parametrize("form", FORMS)
def test_clip_grad_norm_over_model_parameters(form):
    """``torch.nn.utils.clip_grad_norm_(model.parameters(), c)`` in a hand-written loop."""
    from gaugeconv.clip import clip_grad_norm_ as effective_clip

    ref, model = pair(form)
    norms = []
    for m in (ref, model):
        m(**X).loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5))
    if form == "plain":
        assert torch.equal(norms[1], norms[0])
        assert norms[0] > 0.5  # negative control: it clips
        assert torch.equal(model.lm_head.weight.grad, ref.lm_head.weight.grad)
        return
    # documented: parameters() are the stored tensors, whose gradients are m times the effective
    # ones, so torch measures (and clips to) another norm; nothing can tell. gaugeconv.clip
    # measures the effective gradients.
    assert abs(norms[1] / norms[0] - 1) > 0.1
    for m in (ref, model):
        m.zero_grad()
        m(**X).loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    effective_clip(gh.get_gauged(model), 0.5)
    torch.testing.assert_close(model.lm_head.weight.grad, ref.lm_head.weight.grad, rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("form", FORMS)
def test_distributed_data_parallel_single_process(form, tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already up")
    # a file store: no port to collide with other processes on the machine
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        ref, model = pair(form)
        before = logits(ref)
        losses = [train(m, make(m), steps=2, forward=nn.parallel.DistributedDataParallel(m))
                  for m, make in ((ref, reference_optimizer), (model, gauge_optimizer))]
    finally:
        dist.destroy_process_group()
    assert torch.equal(losses[1], losses[0])
    assert torch.equal(logits(model), logits(ref))
    assert not torch.equal(logits(ref), before)


@pytest.mark.parametrize("form", FORMS)
def test_generate(form):
    ref, model = pair(form)
    prompt = X["input_ids"][:, :4]
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
    want = ref.generate(prompt, **kw)
    assert torch.equal(model.generate(prompt, **kw), want)
    assert want.shape[1] == 10
    with torch.no_grad():
        ref.lm_head.weight.mul_(-1.0)
    assert not torch.equal(ref.generate(prompt, **kw), want)  # negative control
