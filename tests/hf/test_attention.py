"""The attention logit scale at richness r (gaugeconv/hf/attention.py, THEORY.md sections 6-7).

s(d) = s_arch(d) * (d0/d)^(1 + e): 1/sqrt(d0) * d0/d for the usual 1/sqrt(d), at every r; the
architecture's own scale at the base head dimension d0; recorded with the gauge, restored by
gh.from_pretrained, never changed by a gauge conversion.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gaugeconv.hf as gh
from gaugeconv.errors import GaugeError
from gaugeconv.hf.attention import attention_modules, describe_attention

from .tiny import VOCAB, build

RICHNESS = (0.0, 0.25, 0.5)


def _ids(n=2, length=10, seed=3):
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _scalings(model):
    return [m.scaling for _, m in attention_modules(model)]


def _gpt2(width=64, **kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=width, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    return GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("r", RICHNESS)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_scale_is_one_over_d_from_the_base_head_dim(arch, r):
    """Width 128, 4 heads (d = 32), base d0 = 8: s = (1/sqrt(8)) * 8/32 at every r."""
    model = build(arch, width=128)
    assert _scalings(model) == [32**-0.5] * 2  # the architecture's own 1/sqrt(d)
    gh.apply_gauge(model, gh.GaugeConfig(richness=r, gauge="mup", attention_base_head_dim=8))
    for s in _scalings(model):
        assert s == pytest.approx(8**-0.5 * 8 / 32, rel=1e-12)
    assert gh.gauge_config_of(model).attention_base_head_dim == 8


def test_gpt2_config_knobs_keep_their_constants():
    """GPT-2 without scale_attn_weights has s_arch = 1 (exponent e = 0): s = (d0/d)^1; the
    inverse-layer-index factor 1/(layer+1) is a constant and is kept."""
    model = _gpt2(128, scale_attn_weights=False)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, attention_base_head_dim=8))
    assert _scalings(model) == pytest.approx([0.25, 0.25], rel=1e-12)
    model = _gpt2(128, scale_attn_by_inverse_layer_idx=True)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, attention_base_head_dim=8))
    assert _scalings(model) == pytest.approx([8**-0.5 / 4, 8**-0.5 / 4 / 2], rel=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_attention_implementation_uses_the_scale(arch):
    """eager and sdpa read the module's `scaling`: both give the same new function, which
    differs from the architecture's own (negative control)."""
    x = _ids()
    outs = {}
    for impl in ("eager", "sdpa"):
        model = build(arch, width=128)
        model.config._attn_implementation = impl
        native = model(input_ids=x).logits
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.25, gauge="stp",
                                             attention_base_head_dim=8))
        outs[impl] = model(input_ids=x).logits
    torch.testing.assert_close(outs["eager"], outs["sdpa"], rtol=1e-5, atol=1e-6)
    assert (outs["eager"] - native).abs().max() > 1e-3


@pytest.mark.parametrize("r", RICHNESS)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_base_width_keeps_a_pretrained_models_function(arch, r):
    """A plain (pretrained-style) model is its own base: the scale and, in STP gauge, the
    outputs are unchanged bit for bit; in muP gauge to float32 rounding."""
    x = _ids()
    model = build(arch, width=48)
    own = _scalings(model)
    before = model(input_ids=x).logits
    gh.apply_gauge(model, gh.GaugeConfig(richness=r, gauge="stp"))
    assert _scalings(model) == own
    assert gh.gauge_config_of(model).attention_base_head_dim == 12
    assert torch.equal(model(input_ids=x).logits, before)
    model = build(arch, width=48)
    gh.apply_gauge(model, gh.GaugeConfig(richness=r, gauge="mup", attention_base_head_dim=12))
    assert _scalings(model) == own
    torch.testing.assert_close(model(input_ids=x).logits, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_recorded_and_restored_by_from_pretrained(arch, tmp_path):
    x = _ids()
    model = build(arch, width=128)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", attention_base_head_dim=8))
    out = model(input_ids=x).logits
    model.save_pretrained(tmp_path)
    cls = type(model)
    loaded = gh.from_pretrained(cls, str(tmp_path))
    assert gh.gauge_config_of(loaded).attention_base_head_dim == 8
    assert _scalings(loaded) == _scalings(model)
    assert torch.equal(loaded(input_ids=x).logits, out)
    plain = cls.from_pretrained(str(tmp_path))  # transformers alone: its own 1/sqrt(d)
    assert _scalings(plain) == [32**-0.5] * 2


def test_gauge_conversions_never_change_the_scale():
    x = _ids()
    model = build("llama", width=128, dtype=torch.float64)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", attention_base_head_dim=8,
                                         form="materialized"))
    scales, out = _scalings(model), model(input_ids=x).logits
    # materialized gauges, then the plain form (a GaugeConfig says form="plain"), then muP again
    for to in ("stp", "rescaling", gh.GaugeConfig(richness=0.5, gauge="mup"), "mup"):
        gh.convert_gauge(model, to)
        assert _scalings(model) == scales
        torch.testing.assert_close(model(input_ids=x).logits, out, rtol=1e-12, atol=1e-14)
    with pytest.raises(GaugeError, match="attention_base_head_dim"):
        gh.convert_gauge(model, gh.GaugeConfig(richness=0.5, gauge="stp",
                                               attention_base_head_dim=16))
    assert _scalings(model) == scales


def test_a_saved_entry_with_another_base_is_refused(tmp_path):
    model = build("llama", width=128)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, attention_base_head_dim=8))
    model.save_pretrained(tmp_path)
    fresh = type(model).from_pretrained(str(tmp_path))
    with pytest.raises(GaugeError, match="attention_base_head_dim"):
        gh.apply_gauge(fresh, gh.GaugeConfig(richness=0.5, attention_base_head_dim=16))
    assert _scalings(fresh) == [32**-0.5] * 2
    with pytest.raises(GaugeError, match="attention_base_head_dim"):
        gh.GaugeConfig(richness=0.5, attention_base_head_dim=0)


class ToyAttention(nn.Module):
    """An attention module that computes its scale inline (no `scaling` attribute)."""

    def __init__(self, width):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)


def test_attention_without_a_scaling_hook_is_listed_and_refused_off_base():
    model = build("llama", width=128)
    model.model.toy = ToyAttention(128)
    assert describe_attention(model, None)["unsupported"] == ["model.toy (ToyAttention)"]
    # the toy's tensors are not in the double-width twin: their roles are declared
    roles = {"model.toy.qkv.weight": "hidden", "model.toy.qkv.bias": "readin"}
    with pytest.raises(GaugeError, match=r"model\.toy \(ToyAttention\)"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, attention_base_head_dim=8,
                                             role_overrides=roles))
    assert _scalings(model) == [32**-0.5] * 2 and gh.gauge_config_of(model) is None
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, role_overrides=roles))  # own base: kept
    assert _scalings(model) == [32**-0.5] * 2


def test_gpt_neo_computes_its_scale_inline_and_is_refused_off_base():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    def model():
        return GPTNeoForCausalLM(GPTNeoConfig(hidden_size=64, num_layers=1, num_heads=4,
                                              vocab_size=VOCAB, attention_types=[[["global"], 1]]))

    assert describe_attention(model(), None)["unsupported"] == ["transformer.h.0.attn (GPTNeoAttention)"]
    with pytest.raises(GaugeError, match="GPTNeoAttention"):
        gh.apply_gauge(model(), gh.GaugeConfig(richness=0.5, attention_base_head_dim=8))
    plain = gh.apply_gauge(model(), gh.GaugeConfig(richness=0.5))
    assert gh.gauge_config_of(plain).attention_base_head_dim == 16


def test_roles_command_reports_the_scale(tmp_path, capsys):
    from gaugeconv.cli import main
    from gaugeconv.hf.inspect import roles_of_folder

    model = build("llama", width=128)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, attention_base_head_dim=8))
    model.save_pretrained(tmp_path)
    att = roles_of_folder(tmp_path)["attention"]  # what `roles --json` prints
    assert att["base_head_dim"] == 8 and att["logit_exponent"] == 1.0
    assert [m["scaling"] for m in att["modules"]] == pytest.approx([8**-0.5 / 4] * 2)
    assert main(["roles", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "base head dim d0=8" in text and "LlamaAttention d=32 scaling 0.08839" in text


@pytest.mark.slow
def test_coord_check_knows_attention():
    """A tiny Llama at r = 1/2 (Adam): with the 1/d scale the attention output layers' own
    updates keep their share of dh (D3) and q/k's first-step loss share falls like n^-1/2 as
    derived; with every width's own 1/sqrt(d) (negative control) the logits move sqrt(d) too
    much, o_proj's input outgrows its own update, and the check flags D3 there."""
    from gaugeconv.data import token_data
    from gaugeconv.diagnostics import CoordCheckConfig, coord_check
    from gaugeconv.diagnostics.transformer import transformer_factory

    cfg = CoordCheckConfig(richness=0.5, optimizer="adam", widths=WIDTHS, seeds=1, lr=0.02,
                           batch_size=16, tolerance=TOL)
    reports = {att: coord_check(cfg, transformer_factory("llama", 0.5, "adam", attention=att),
                                token_data(64)) for att in ("richness", "sqrt")}
    good, bad = reports["richness"], reports["sqrt"]
    o_proj = [layer for layer in good.layers if layer.endswith("o_proj")]
    qk = [layer for layer in good.layers if layer.endswith(("q_proj", "k_proj"))]
    for layer in o_proj:
        assert good.results[layer]["own_update_share"]["pass"], layer
        assert good.results[layer]["feature_change"]["pass"], layer
    for layer in qk:
        assert good.results[layer]["loss_share"]["expected"] == -0.5
        assert good.results[layer]["loss_share"]["pass"], layer
    assert any(f["layer"] in o_proj for f in bad.verdicts["D3"]["failures"])
    assert {f["layer"] for f in bad.verdicts["D2"]["failures"]} >= set(qk)  # q, k learn too much
    assert not all(bad.results[layer]["own_update_share"]["pass"] for layer in o_proj)


WIDTHS, TOL = (64, 128, 256), 0.15


@pytest.mark.slow
def test_coord_check_splits_gpt2s_fused_qkv_and_judges_the_widest_window():
    """GPT-2's c_attn is reported per q | k | v block: q and k's first-step loss shares fall
    (1/d scale, Adam: n^-1/2), v's does not; the whole tensor's shares are not judged. With
    window=2 the verdict's slope is the fit over the two widest widths."""
    from gaugeconv.data import token_data
    from gaugeconv.diagnostics import CoordCheckConfig, coord_check
    from gaugeconv.diagnostics.fit import loglog_slope
    from gaugeconv.diagnostics.transformer import transformer_factory

    cfg = CoordCheckConfig(richness=0.5, optimizer="adam", widths=(64, 128, 256), seeds=1,
                           lr=0.02, batch_size=16, window=2)
    rep = coord_check(cfg, transformer_factory("gpt2", 0.5, "adam", layers=1), token_data(64))
    res = rep.results
    whole = "transformer.h.0.attn.c_attn"
    assert res[whole]["loss_share"]["expected"] is None
    assert [res[f"{whole}[{p}]"]["loss_share"]["expected"] for p in "qkv"] == [-0.5, -0.5, 0.0]
    for p in "qk":
        assert res[f"{whole}[{p}]"]["loss_share"]["slope"] < res[f"{whole}[v]"]["loss_share"]["slope"] - 0.25
    st = res[f"{whole}[v]"]["feature_change"]
    assert st["window_slope"] == pytest.approx(loglog_slope((128, 256), st["values"][1:]), abs=1e-12)
