"""Hugging Face models: roles, exact conversion, persistence in config.json, refusals."""

import json

import pytest
import torch
from torch import nn

import gaugeconv.hf as gh
from gaugeconv import Custom, GaugeError, RichnessError, RoleError, UnknownGaugeError
from tests.hf.tiny import ARCHS, batch, build


def ulps(a, b):
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max().item()


def roles(model):
    return {r["name"]: (r["role"], r["fan_in"], r["source"]) for r in gh.describe_roles(model)}


def test_gpt2_roles_conv1d_and_tied_head():
    model = gh.apply_gauge(build("gpt2", width=48), gh.GaugeConfig(richness=0.5, gauge="mup"))
    r = roles(model)
    assert r["transformer.wte.weight"] == ("readout", 48, "tied")
    assert r["transformer.wpe.weight"] == ("readin", 1, "shapes")
    assert r["transformer.h.0.attn.c_attn.weight"] == ("hidden", 48, "shapes")  # Conv1D [in, out]
    assert r["transformer.h.0.mlp.c_proj.weight"] == ("hidden", 192, "shapes")
    assert r["transformer.h.0.ln_1.bias"] == ("readin", 1, "shapes")
    assert "lm_head.weight" not in r  # one stored tensor, two uses
    uses = {x["name"]: x["uses"] for x in gh.describe_roles(model)}
    assert uses["transformer.wte.weight"] == ["transformer.wte.weight", "lm_head.weight"]


def test_llama_and_bert_roles():
    r = roles(gh.apply_gauge(build("llama", 48), gh.GaugeConfig(richness=0.5)))
    assert r["lm_head.weight"] == ("readout", 48, "shapes")
    assert r["model.embed_tokens.weight"] == ("readin", 1, "shapes")
    assert r["model.layers.0.self_attn.k_proj.weight"] == ("hidden", 48, "shapes")  # GQA
    assert r["model.layers.0.mlp.down_proj.weight"] == ("hidden", 192, "shapes")
    assert r["model.norm.weight"] == ("readin", 1, "shapes")
    r = roles(gh.apply_gauge(build("bert", 48), gh.GaugeConfig(richness=0.5, tied_role="readin")))
    assert r["bert.embeddings.word_embeddings.weight"] == ("readin", 1, "tied")
    assert r["bert.embeddings.token_type_embeddings.weight"] == ("readin", 1, "shapes")
    assert r["bert.embeddings.LayerNorm.weight"] == ("readin", 1, "shapes")
    assert r["cls.predictions.transform.dense.weight"] == ("hidden", 48, "shapes")
    assert r["cls.predictions.bias"] == ("fixed", 1, "tied")  # also cls.predictions.decoder.bias


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_conversion_keeps_outputs_and_round_trips(arch, optimizer):
    model = build(arch, width=48).eval()
    x = batch(arch)
    x.pop("labels")
    ref = model(**x).logits
    stored = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="stp", optimizer=optimizer,
                                         form="materialized"))
    assert torch.equal(model(**x).logits, ref)  # STP gauge: no hooks, same model
    custom = Custom(lambda spec: 0.7 if spec.role.value == "hidden" else 1.3)
    for gauge in ("mup", "rescaling", custom):
        gh.convert_gauge(model, gauge)
        out = model(**x).logits
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        assert rel < 2e-6, (gauge, rel)  # float32 rounding level
        assert model.config.gaugeconv["gauge"] == getattr(gauge, "name", gauge)
    gh.convert_gauge(model, "stp")
    assert gh.get_gauged(model).hooks.active == 0
    for k, v in model.state_dict().items():
        assert ulps(v, stored[k]) <= 2, k  # four hops, each rounded once (<= 1/2 ulp)
    for gauge in ("mup", "rescaling"):  # A -> B -> A: within 1 ulp
        start = {k: v.clone() for k, v in model.state_dict().items()}
        gh.convert_gauge(model, gauge)
        gh.convert_gauge(model, "stp")
        for k, v in model.state_dict().items():
            assert ulps(v, start[k]) <= 1, (gauge, k)


@pytest.mark.parametrize("arch", ["gpt2", "llama-tied", "bert"])
def test_power_of_two_width_is_bit_identical(arch):
    model = build(arch, width=64).eval()
    x = batch(arch)
    x.pop("labels")
    ref = model(**x).logits
    stored = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="rescaling", form="materialized"))
    # the stored tensors moved (the state dict holds effective tensors: it stays equal)
    assert any(not torch.equal(v, stored[k]) for k, v in model.named_parameters())
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(**x).logits, ref)
    gh.convert_gauge(model, "mup")
    assert torch.equal(model(**x).logits, ref)
    gh.convert_gauge(model, "stp")
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[k]), k


@pytest.mark.parametrize("form", ["plain", "materialized"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_save_and_load_round_trip(tmp_path, arch, form):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    model = gh.apply_gauge(build(arch, 48).eval(), gh.GaugeConfig(richness=0.25, gauge="mup",
                                                                  form=form))
    x = batch(arch)
    x.pop("labels")
    ref = model(**x).logits
    model.save_pretrained(tmp_path / "mup")
    entry = json.loads((tmp_path / "mup" / "config.json").read_text())["gaugeconv"]
    assert entry["gauge"] == "mup" and entry["richness"] == 0.25 and entry["width"] == 48
    assert entry["form"] == form

    loaded = gh.from_pretrained(auto, tmp_path / "mup").eval()
    assert torch.equal(loaded(**x).logits, ref)
    assert gh.form_of(loaded) == form
    assert gh.get_gauged(loaded).multipliers == gh.get_gauged(model).multipliers
    loaded.save_pretrained(tmp_path / "again")  # a re-save keeps the gauge
    again = json.loads((tmp_path / "again" / "config.json").read_text())["gaugeconv"]
    assert again == entry

    # plain transformers loads an STP-gauge save exactly
    gh.convert_gauge(model, "stp")
    model.save_pretrained(tmp_path / "stp")
    plain = auto.from_pretrained(tmp_path / "stp").eval()
    assert torch.allclose(plain(**x).logits, ref, rtol=2e-6, atol=1e-6)
    assert torch.equal(plain(**x).logits, model(**x).logits)


def test_bad_config_entries_and_inputs(tmp_path):
    from transformers import AutoModelForCausalLM

    with pytest.raises(GaugeError, match=r"unknown gauge config field\(s\) \['richnes'\]"):
        gh.GaugeConfig.from_dict({"richnes": 0.5})
    with pytest.raises(RichnessError, match="r=0.6"):
        gh.GaugeConfig(richness=0.6)
    with pytest.raises(UnknownGaugeError, match="'ntk'"):
        gh.GaugeConfig(richness=0.5, gauge="ntk")
    model = gh.apply_gauge(build("gpt2", 48), gh.GaugeConfig(richness=0.5, gauge="mup"))
    with pytest.raises(GaugeError, match="already carries a gauge"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5))
    with pytest.raises(GaugeError, match="richness=0.5 but richness=0.25"):
        gh.convert_gauge(model, gh.GaugeConfig(richness=0.25))
    model.save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["gaugeconv"]["multipliers"]["transformer.h.0.attn.c_attn.weight"] *= 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(GaugeError, match="disagrees with the model at 'transformer.h.0.attn.c_attn"):
        gh.from_pretrained(AutoModelForCausalLM, tmp_path / "m")
    cfg["gaugeconv"]["multipliers"]["transformer.h.0.attn.c_attn.weight"] /= 2
    cfg["gaugeconv"]["width"] = 96
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(GaugeError, match="entry says width 96, the model's hidden size is 48"):
        gh.from_pretrained(AutoModelForCausalLM, tmp_path / "m")


class Scaled(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(n, n))  # a matrix in a module of unknown type

    def forward(self, h):
        return h @ self.gain


def test_unknown_module_type_is_named_and_overrides_fix_it():
    model = build("gpt2", 48)
    model.transformer.h[0].extra = Scaled(48)
    with pytest.raises(RoleError, match=r"transformer.h.0.extra.gain \(Scaled\)"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5))
    assert "_gaugeconv" not in model.__dict__ and not hasattr(model.config, "gaugeconv")
    cfg = gh.GaugeConfig(richness=0.5, role_overrides={"*.extra.gain": "hidden"},
                         fan_in_overrides={"*.extra.gain": 48})
    gh.apply_gauge(model, cfg)
    assert roles(model)["transformer.h.0.extra.gain"] == ("hidden", 48, "override")


def test_initialize_draws_the_table():
    model = gh.apply_gauge(build("llama", 256), gh.GaugeConfig(richness=0.5, gauge="mup"))
    gh.initialize(model, seed=0)
    eff = gh.get_gauged(model).effective_parameters()
    assert eff["model.layers.0.mlp.up_proj.weight"].var().item() == pytest.approx(1 / 256, rel=0.05)
    assert eff["lm_head.weight"].var().item() == pytest.approx(1 / 256**2, rel=0.05)
    assert torch.equal(eff["model.norm.weight"], torch.ones(256, dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.parametrize("r", [0.0, 0.5])
def test_coord_check_on_a_hugging_face_llama(r):
    """The coordinate check through the API on a real transformer: roles per module and the
    richness exponent of every hidden representation (RMS(dh)/RMS(h) ~ n^(r - 1/2))."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gaugeconv.data import token_data
    from gaugeconv.diagnostics import CoordCheckConfig, coord_check

    def factory(width, seed):
        torch.manual_seed(seed)
        cfg = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                          max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
                          tie_word_embeddings=False)
        model = gh.apply_gauge(LlamaForCausalLM(cfg), gh.GaugeConfig(
            richness=r, gauge="mup", attention_base_head_dim=16))  # 1/d scale (hf/attention.py)
        return gh.get_gauged(gh.initialize(model, seed))

    cfg = CoordCheckConfig(richness=r, optimizer="adam", widths=(64, 128, 256, 512), seeds=2,
                           lr=0.02, batch_size=16)
    rep = coord_check(cfg, factory, token_data(64))
    assert rep.roles["model.embed_tokens"] == "readin" and rep.roles["lm_head"] == "readout"
    hidden = [name for name, role in rep.roles.items() if role == "hidden"]
    assert len(hidden) == 14
    for name in hidden + ["model.embed_tokens"]:
        assert abs(rep.results[name]["feature_change"]["slope"] - (r - 0.5)) <= 0.15, name
    assert abs(rep.results["lm_head"]["rms_h_init"]["slope"] + r) <= 0.1


def test_bert_with_pooler_and_next_sentence_head():
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=48, intermediate_size=192, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=61, max_position_embeddings=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    model = BertForPreTraining(cfg).eval()
    x = batch("bert")
    x.pop("labels")
    ref = model(**x)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="rescaling", form="materialized"))
    r = roles(model)
    assert r["bert.pooler.dense.weight"] == ("hidden", 48, "shapes")
    assert r["cls.seq_relationship.weight"] == ("readout", 48, "shapes")
    assert r["cls.seq_relationship.bias"] == ("fixed", 1, "shapes")
    assert r["bert.embeddings.position_embeddings.weight"] == ("readin", 1, "shapes")
    out = model(**x)
    for a, b in ((out.prediction_logits, ref.prediction_logits),
                 (out.seq_relationship_logits, ref.seq_relationship_logits)):
        assert ((a - b).abs().max() / b.abs().max()).item() < 2e-6
