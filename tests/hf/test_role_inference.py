"""Role inference never guesses silently: config width scaling, module rules, verdicts, persistence."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gaugeconv.hf as gh
from gaugeconv import Custom, GaugeError, RoleError
from gaugeconv.cli import main
from gaugeconv.hf.inspect import roles_of_folder
from gaugeconv.hf.width_scaling import wider_config
from tests.hf.zoo import ZOO, W, build, flat_outputs, inputs


def roles(model) -> dict[str, str]:
    return {r["name"]: r["role"] for r in gh.describe_roles(model)}


def _siglip_text(projection: int):
    from transformers import SiglipTextConfig, SiglipTextModel

    kw = dict(ZOO["siglip"].kwargs["text_config"], projection_size=projection)
    return SiglipTextModel(SiglipTextConfig(**kw)).eval()


def test_an_undecidable_field_is_named_with_its_override():
    model = _siglip_text(20)  # 20 is not a multiple of the width 48
    with pytest.raises(RoleError, match=r"SiglipTextConfig.projection_size=20 .*width_fields="
                       r"\{'projection_size': 'scale'\}"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5))
    assert "_gaugeconv" not in model.__dict__ and not hasattr(model.config, "gaugeconv")
    # fixed: the head maps width n to a fixed-size embedding, a readout
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, width_fields={"projection_size": "fixed"}))
    assert roles(model)["head.weight"] == "readout"
    # grows: the head is a hidden layer and the text model has no readout, which is refused
    # unless confirmed
    model = _siglip_text(20)
    cfg = gh.GaugeConfig(richness=0.5, width_fields={"projection_size": "scale"})
    with pytest.raises(RoleError, match="SiglipTextModel: no readout tensor"):
        gh.apply_gauge(model, cfg)
    gh.apply_gauge(model, cfg.replace(allow_unusual_roles=True))
    assert roles(model)["head.weight"] == "hidden"


def test_architecture_designs_decide_derived_fields():
    from transformers import AlbertConfig, OPTConfig

    opt = OPTConfig(**dict(ZOO["opt"].kwargs, word_embed_proj_dim=20))  # OPT-350m's kind
    wide, report = wider_config(opt)
    assert wide.word_embed_proj_dim == 40
    assert {f.path: f.reason for f in report}["word_embed_proj_dim"] == "derived (design)"
    albert = AlbertConfig(**dict(ZOO["albert"].kwargs, embedding_size=W))  # E = n, still fixed
    wide, _ = wider_config(albert)
    assert wide.embedding_size == W and wide.hidden_size == 2 * W


def test_nested_list_property_and_auto_fields():
    from transformers import CLIPConfig, ConvNextConfig, FalconConfig, MambaConfig

    kwargs = dict(ZOO["clip"].kwargs)  # a vision tower of its own width (32): measured apart
    kwargs["vision_config"] = {**kwargs["vision_config"], "hidden_size": 32, "intermediate_size": 64}
    clip = CLIPConfig(**kwargs)
    wide, report = wider_config(clip, 2, width=W)
    assert wide.text_config.hidden_size == 2 * W and wide.vision_config.hidden_size == 64
    assert wide.projection_dim == clip.projection_dim  # the joint space is an output space
    assert {f.path for f in report} >= {"text_config.hidden_size", "vision_config.hidden_size"}
    # negative control: the old frozen sub-configs are refused, not "every tensor fixed"
    frozen = {f"{c}.{k}": "fixed" for c in ("text_config", "vision_config")
              for k in ("hidden_size", "intermediate_size")}
    with pytest.raises(RoleError, match="no field of CLIPConfig grows with width"):
        wider_config(clip, 2, width=W, overrides=frozen)

    convnext = ConvNextConfig(**ZOO["convnext"].kwargs)
    wide, report = wider_config(convnext, 2, width=32)
    assert wide.hidden_sizes == [32, 64] and wide.depths == [1, 1]

    falcon = FalconConfig(**ZOO["falcon"].kwargs)  # head_dim is a read-only property
    wide, report = wider_config(falcon)
    assert wide.head_dim == 2 * falcon.head_dim and "head_dim" not in {f.path for f in report}

    mamba = MambaConfig(**ZOO["mamba"].kwargs)  # time_step_rank="auto" = ceil(48 / 16) = 3
    wide, report = wider_config(mamba)
    assert wide.time_step_rank == 6 and wide.intermediate_size == 2 * mamba.intermediate_size
    assert [f.reason for f in report if f.path == "time_step_rank"] == ["auto rule"]
    with pytest.raises(RoleError, match=r"MambaConfig.time_step_rank=5 "):
        wider_config(MambaConfig(**dict(ZOO["mamba"].kwargs, time_step_rank=5)))
    with pytest.raises(GaugeError, match=r"width_fields\['time_step_rank'\] = 'grow'"):
        gh.GaugeConfig(richness=0.5, width_fields={"time_step_rank": "grow"})


def test_a_tensor_missing_from_the_twin_is_named():
    model = build("gpt2")
    model.transformer.h[0].extra = nn.Linear(W, W)  # not in the architecture: no twin
    with pytest.raises(RoleError, match=r"no counterpart in the double-width twin of "
                       r"GPT2LMHeadModel: transformer.h.0.extra.weight"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5))
    assert "_gaugeconv" not in model.__dict__
    cfg = gh.GaugeConfig(richness=0.5, role_overrides={"*.extra.*": "hidden"},
                         fan_in_overrides={"*.extra.*": W})
    gh.apply_gauge(model, cfg)
    assert roles(model)["transformer.h.0.extra.weight"] == "hidden"


def test_unusual_roles_are_refused_unless_confirmed(tmp_path):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(**ZOO["bert"].kwargs)).eval()  # no head: no readout
    with pytest.raises(RoleError, match="BertModel: no readout tensor .*allow_unusual_roles"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5))
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, allow_unusual_roles=True))
    x = inputs("bert")
    ref = model(**x).last_hidden_state
    model.save_pretrained(tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["gaugeconv"]
    assert entry["allow_unusual_roles"] is True
    loaded = gh.from_pretrained(BertModel, tmp_path).eval()
    assert torch.equal(loaded(**x).last_hidden_state, ref)
    with pytest.raises(RoleError, match="every tensor is fixed"):
        gh.apply_gauge(build("gpt2"), gh.GaugeConfig(richness=0.5, role_overrides={"*": "fixed"}))


class Mix(nn.Module):
    """A module type no built-in rule knows: h @ weight ([in, out])."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) / n**0.5)

    def forward(self, h):
        return h @ self.weight


def _mix_classes():
    from transformers import PretrainedConfig, PreTrainedModel

    class MixConfig(PretrainedConfig):
        model_type = "gaugeconv-test-mix"

        def __init__(self, hidden_size: int = 32, vocab_size: int = 17, **kw):
            self.hidden_size, self.vocab_size = hidden_size, vocab_size
            super().__init__(**kw)

    class MixModel(PreTrainedModel):
        config_class = MixConfig

        def __init__(self, config):
            super().__init__(config)
            self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
            self.mix = Mix(config.hidden_size)
            self.head = nn.Linear(config.hidden_size, config.vocab_size)
            self.post_init()

        def forward(self, input_ids):
            return self.head(torch.tanh(self.mix(self.embed(input_ids))))

    return MixConfig, MixModel


def test_module_axes_are_saved_and_reload_without_code(tmp_path):
    config_cls, model_cls = _mix_classes()
    torch.manual_seed(0)
    model = model_cls(config_cls(hidden_size=48)).eval()
    with pytest.raises(RoleError, match=r"mix.weight \(Mix\).*module_axes"):
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5))
    with pytest.raises(GaugeError, match="no functions"):
        gh.GaugeConfig(richness=0.5, module_axes={"Mix": lambda attr, shape: ((0,), (1,))})
    with pytest.raises(GaugeError, match="unknown rule 'dense'"):
        gh.GaugeConfig(richness=0.5, module_axes={"Mix": "dense"})
    x = torch.tensor([[1, 2, 3, 4]])
    ref = model(x)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup"),
                   module_axes={"Mix": {"weight": [[0], [1]]}})
    info = {r["name"]: (r["role"], r["fan_in"]) for r in gh.describe_roles(model)}
    assert info["mix.weight"] == ("hidden", 48) and info["head.weight"] == ("readout", 48)
    assert (model(x) - ref).abs().max() <= 1e-6 * ref.abs().max()
    model.save_pretrained(tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["gaugeconv"]
    assert entry["module_axes"] == {"Mix": {"weight": [[0], [1]]}}
    loaded = gh.from_pretrained(model_cls, tmp_path).eval()
    assert gh.get_gauged(loaded).multipliers == gh.get_gauged(model).multipliers
    assert torch.equal(loaded(x), model(x))


def test_the_probe_fails_when_a_multiplier_is_not_applied():
    """Negative control of the zoo's probe: m = 2 everywhere with the multipliers detached."""
    model = build("llama")
    x = inputs("llama")
    with torch.no_grad():
        ref = flat_outputs(model(**x))
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="stp", form="materialized"))
        gh.convert_gauge(model, Custom(lambda spec: 2.0))
        assert torch.equal(flat_outputs(model(**x)), ref)
        gh.get_gauged(model).remove()
        assert not torch.equal(flat_outputs(model(**x)), ref)


def test_roles_command_summary_and_flags(tmp_path, capsys):
    build("qwen2-moe").save_pretrained(tmp_path / "moe")
    assert main(["roles", str(tmp_path / "moe"), "-r", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # lm_head, two routers and two scalar shared-expert gates map width to a fixed size
    assert report["summary"]["readout"] == 5 and report["verdict"] == []
    rules = {t["name"]: t["rule"] for t in report["tensors"]}
    assert rules["model.layers.0.mlp.gate.weight"] == "router"
    assert rules["model.layers.0.mlp.experts.gate_up_proj"] == "experts"
    assert report["flags"] == [  # routers are readouts by design; the scalar gates are flagged
        f"model.layers.{i}.mlp.shared_expert_gate.weight: readout inside the network "
        "(a numbered block of layers)" for i in (0, 1)]
    assert main(["roles", str(tmp_path / "moe"), "-r", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "roles: 12 readin, 18 hidden, 5 readout, 0 fixed" in out
    assert "moe_intermediate_size 48->96 (width field)" in out

    build("gpt2").save_pretrained(tmp_path / "gpt2")
    cfg = gh.GaugeConfig(richness=0.5, role_overrides={"*.mlp.c_fc.weight": "fixed"})
    flags = roles_of_folder(tmp_path / "gpt2", cfg)["flags"]
    assert flags == [f"transformer.h.{i}.mlp.c_fc.weight: fixed, but its shape [48, 192] has a "
                     "width-sized dimension" for i in (0, 1)]
    assert roles_of_folder(tmp_path / "gpt2", gh.GaugeConfig(richness=0.5))["flags"] == []
