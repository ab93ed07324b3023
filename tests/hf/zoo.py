"""Tiny models of many transformers architectures, built from their config classes (no downloads).

Each entry gives the config and model class, the config's keywords (hidden 32-64, 1-2 layers,
vocabulary 61), the kind of input, and the GaugeConfig keywords the architecture needs (only
``width=`` for configs without a hidden size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

VOCAB = 61
W = 48


def _lm(**kw: Any) -> dict[str, Any]:
    """The keywords of a Llama-like decoder."""
    base = dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
                bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    base.update(kw)
    return base


def _moe(**kw: Any) -> dict[str, Any]:
    base = _lm(num_experts_per_tok=2, output_router_logits=False)
    base.update(kw)
    return base


def _enc(**kw: Any) -> dict[str, Any]:
    """The keywords of a BERT-like encoder."""
    base = dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=VOCAB, max_position_embeddings=40, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=0)
    base.update(kw)
    return base


_NO_DROP_S2S = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


@dataclass(frozen=True)
class Arch:
    config: str
    model: str
    kwargs: dict[str, Any]
    inputs: str = "text"  # text, seq2seq, image, audio, whisper, clip
    gauge: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, Arch] = {
    # decoders
    "gpt2": Arch("GPT2Config", "GPT2LMHeadModel", dict(
        n_embd=W, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)),
    "gptj": Arch("GPTJConfig", "GPTJForCausalLM", dict(
        n_embd=W, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)),
    "gpt-neox": Arch("GPTNeoXConfig", "GPTNeoXForCausalLM", _lm(
        rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0)),
    "gpt-neo": Arch("GPTNeoConfig", "GPTNeoForCausalLM", dict(
        hidden_size=W, num_layers=2, attention_types=[[["global", "local"], 1]], num_heads=4,
        window_size=8, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0,
        eos_token_id=0, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0)),
    "gpt-bigcode": Arch("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(
        n_embd=W, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, multi_query=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)),
    "codegen": Arch("CodeGenConfig", "CodeGenForCausalLM", dict(
        n_embd=W, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=32,
        n_ctx=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
        eos_token_id=0)),
    "opt": Arch("OPTConfig", "OPTForCausalLM", dict(
        hidden_size=W, ffn_dim=2 * W, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=W, vocab_size=VOCAB, max_position_embeddings=32, dropout=0.0,
        attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "opt-proj": Arch("OPTConfig", "OPTForCausalLM", dict(
        hidden_size=W, ffn_dim=2 * W, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=W // 2, vocab_size=VOCAB, max_position_embeddings=32, dropout=0.0,
        attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "bloom": Arch("BloomConfig", "BloomForCausalLM", dict(
        hidden_size=W, n_layer=2, n_head=4, vocab_size=VOCAB, hidden_dropout=0.0,
        attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "falcon": Arch("FalconConfig", "FalconForCausalLM", dict(
        hidden_size=W, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
        max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0,
        new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "llama": Arch("LlamaConfig", "LlamaForCausalLM", _lm()),
    "llama-tied": Arch("LlamaConfig", "LlamaForCausalLM", _lm(tie_word_embeddings=True)),
    "mistral": Arch("MistralConfig", "MistralForCausalLM", _lm(sliding_window=16)),
    "qwen2": Arch("Qwen2Config", "Qwen2ForCausalLM", _lm(tie_word_embeddings=True)),
    "qwen3": Arch("Qwen3Config", "Qwen3ForCausalLM", _lm(head_dim=16)),
    "gemma": Arch("GemmaConfig", "GemmaForCausalLM", _lm(head_dim=12, tie_word_embeddings=True)),
    "gemma2": Arch("Gemma2Config", "Gemma2ForCausalLM", _lm(
        head_dim=12, query_pre_attn_scalar=12, sliding_window=16, tie_word_embeddings=True)),
    "gemma3": Arch("Gemma3TextConfig", "Gemma3ForCausalLM", _lm(
        head_dim=12, query_pre_attn_scalar=12, sliding_window=16, tie_word_embeddings=True)),
    "phi": Arch("PhiConfig", "PhiForCausalLM", _lm(
        partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)),
    "phi3": Arch("Phi3Config", "Phi3ForCausalLM", _lm(
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)),
    "stablelm": Arch("StableLmConfig", "StableLmForCausalLM", _lm(
        partial_rotary_factor=0.5, hidden_dropout=0.0, attention_dropout=0.0)),
    "persimmon": Arch("PersimmonConfig", "PersimmonForCausalLM", dict(
        hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2, num_attention_heads=4,
        partial_rotary_factor=0.5, vocab_size=VOCAB, max_position_embeddings=32,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
        pad_token_id=0)),
    "olmo": Arch("OlmoConfig", "OlmoForCausalLM", _lm()),
    "olmo2": Arch("Olmo2Config", "Olmo2ForCausalLM", _lm()),
    "granite": Arch("GraniteConfig", "GraniteForCausalLM", _lm(
        embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=4.0,
        attention_multiplier=0.1)),
    "cohere": Arch("CohereConfig", "CohereForCausalLM", _lm(tie_word_embeddings=True)),
    "starcoder2": Arch("Starcoder2Config", "Starcoder2ForCausalLM", _lm(
        residual_dropout=0.0, embedding_dropout=0.0, sliding_window=16)),
    # mixtures of experts
    "mixtral": Arch("MixtralConfig", "MixtralForCausalLM", _moe(num_local_experts=4)),
    "qwen2-moe": Arch("Qwen2MoeConfig", "Qwen2MoeForCausalLM", _moe(
        num_experts=4, moe_intermediate_size=W, shared_expert_intermediate_size=2 * W,
        decoder_sparse_step=1)),
    "qwen3-moe": Arch("Qwen3MoeConfig", "Qwen3MoeForCausalLM", _moe(
        num_experts=4, moe_intermediate_size=W, head_dim=16, decoder_sparse_step=1)),
    "olmoe": Arch("OlmoeConfig", "OlmoeForCausalLM", _moe(num_experts=4)),
    "granite-moe": Arch("GraniteMoeConfig", "GraniteMoeForCausalLM", _moe(num_local_experts=4)),
    # state-space and recurrent models
    "mamba": Arch("MambaConfig", "MambaForCausalLM", dict(
        hidden_size=W, state_size=8, num_hidden_layers=2, vocab_size=VOCAB, expand=2,
        conv_kernel=4, bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False)),
    "falcon-mamba": Arch("FalconMambaConfig", "FalconMambaForCausalLM", dict(
        hidden_size=W, state_size=8, num_hidden_layers=2, vocab_size=VOCAB, expand=2,
        conv_kernel=4, bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False)),
    "mamba2": Arch("Mamba2Config", "Mamba2ForCausalLM", dict(
        hidden_size=W, state_size=8, num_hidden_layers=2, vocab_size=VOCAB, expand=2,
        num_heads=8, head_dim=12, n_groups=1, chunk_size=8, conv_kernel=4, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, use_cache=False)),
    "rwkv": Arch("RwkvConfig", "RwkvForCausalLM", dict(
        hidden_size=W, attention_hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2,
        vocab_size=VOCAB, context_length=32, bos_token_id=0, eos_token_id=0, use_cache=False,
        rescale_every=0)),  # its eval-mode in-place rescaling of weights is refused in a gauge
    # encoders
    "bert": Arch("BertConfig", "BertForMaskedLM", _enc()),
    "roberta": Arch("RobertaConfig", "RobertaForMaskedLM", _enc(pad_token_id=1)),
    "xlm-roberta": Arch("XLMRobertaConfig", "XLMRobertaForSequenceClassification", _enc(
        pad_token_id=1, num_labels=3)),
    "distilbert": Arch("DistilBertConfig", "DistilBertForMaskedLM", dict(
        dim=W, hidden_dim=2 * W, n_layers=2, n_heads=4, vocab_size=VOCAB,
        max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, pad_token_id=0)),
    "albert": Arch("AlbertConfig", "AlbertForMaskedLM", _enc(embedding_size=W // 2)),
    "electra": Arch("ElectraConfig", "ElectraForMaskedLM", _enc(embedding_size=W)),
    "deberta-v2": Arch("DebertaV2Config", "DebertaV2ForSequenceClassification", _enc(
        relative_attention=True, position_buckets=8, max_relative_positions=16,
        pos_att_type=["p2c", "c2p"], pooler_hidden_size=W, num_labels=3, pooler_dropout=0.0)),
    "mobilebert": Arch("MobileBertConfig", "MobileBertForMaskedLM", _enc(
        embedding_size=W // 2, intra_bottleneck_size=W // 2, num_feedforward_networks=2,
        true_hidden_size=W // 2)),
    "modernbert": Arch("ModernBertConfig", "ModernBertForMaskedLM", dict(
        hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=32, global_attn_every_n_layers=2,
        local_attention=8, pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0,
        sep_token_id=0, embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0)),
    # encoder-decoders
    "t5": Arch("T5Config", "T5ForConditionalGeneration", dict(
        d_model=W, d_ff=2 * W, d_kv=12, num_layers=1, num_decoder_layers=1, num_heads=4,
        relative_attention_num_buckets=8, vocab_size=VOCAB, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), "seq2seq"),
    "bart": Arch("BartConfig", "BartForConditionalGeneration", dict(
        d_model=W, encoder_ffn_dim=2 * W, decoder_ffn_dim=2 * W, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=32, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, **_NO_DROP_S2S), "seq2seq"),
    "pegasus": Arch("PegasusConfig", "PegasusForConditionalGeneration", dict(
        d_model=W, encoder_ffn_dim=2 * W, decoder_ffn_dim=2 * W, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **_NO_DROP_S2S), "seq2seq"),
    "whisper": Arch("WhisperConfig", "WhisperForConditionalGeneration", dict(
        d_model=W, encoder_ffn_dim=2 * W, decoder_ffn_dim=2 * W, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        vocab_size=VOCAB, num_mel_bins=8, max_source_positions=8, max_target_positions=16,
        pad_token_id=0, bos_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        suppress_tokens=None, begin_suppress_tokens=None, **_NO_DROP_S2S), "whisper"),
    # vision and audio
    "vit": Arch("ViTConfig", "ViTForImageClassification", _enc(
        image_size=16, patch_size=4, num_channels=3, num_labels=5, vocab_size=None,
        max_position_embeddings=None, pad_token_id=None), "image"),
    "swin": Arch("SwinConfig", "SwinForImageClassification", dict(
        image_size=16, patch_size=2, num_channels=3, embed_dim=16, depths=[1, 1],
        num_heads=[2, 4], window_size=4, num_labels=5, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, drop_path_rate=0.0), "image", {"width": 32}),
    "convnext": Arch("ConvNextConfig", "ConvNextForImageClassification", dict(
        num_channels=3, patch_size=2, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=5,
        image_size=16, drop_path_rate=0.0), "image", {"width": 32}),
    "siglip": Arch("SiglipConfig", "SiglipModel", dict(
        text_config=dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=12,
                         pad_token_id=0, bos_token_id=0, eos_token_id=0),
        vision_config=dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=1,
                           num_attention_heads=4, image_size=16, patch_size=4)),
        "clip", {"width": W, "allow_unusual_roles": True}),  # no readout: see README
    "clip": Arch("CLIPConfig", "CLIPModel", dict(
        text_config=dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=12,
                         pad_token_id=0, bos_token_id=0, eos_token_id=0),
        # one head dimension in both towers: one attention base head dim (hf/attention.py)
        vision_config=dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=1,
                           num_attention_heads=4, image_size=16, patch_size=4),
        projection_dim=16), "clip", {"width": W}),
    "wav2vec2": Arch("Wav2Vec2Config", "Wav2Vec2ForCTC", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        conv_dim=(16, 16), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, vocab_size=VOCAB, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, do_stable_layer_norm=True,
        feat_extract_norm="layer", pad_token_id=0), "audio"),
}


def build(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    import transformers

    arch = ZOO[name]
    torch.manual_seed(seed)
    config = getattr(transformers, arch.config)(**arch.kwargs)
    moe = any(hasattr(config, k) for k in ("num_experts", "num_local_experts"))
    if dtype == torch.float64 and moe:
        config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    model = getattr(transformers, arch.model)(config)
    return model.to(dtype).eval()


def inputs(name: str, dtype: torch.dtype = torch.float32, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    kind = ZOO[name].inputs
    ids = torch.randint(2, VOCAB, (2, 10), generator=gen)
    if kind == "text":
        return {"input_ids": ids}
    if kind == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :6]}
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=gen, dtype=dtype)}
    if kind == "clip":
        return {"input_ids": ids, "pixel_values": torch.randn(2, 3, 16, 16, generator=gen,
                                                               dtype=dtype)}
    if kind == "audio":
        return {"input_values": torch.randn(2, 200, generator=gen, dtype=dtype)}
    if kind == "whisper":
        return {"input_features": torch.randn(2, 8, 16, generator=gen, dtype=dtype),
                "decoder_input_ids": ids[:, :6]}
    raise ValueError(kind)


def flat_outputs(out: Any) -> torch.Tensor:
    """Every tensor of a model output (logits, embeddings...), flattened into one vector."""
    found: list[torch.Tensor] = []

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            found.append(x.reshape(-1))
        elif isinstance(x, (tuple, list)):
            for y in x:
                visit(y)
        elif hasattr(x, "to_tuple"):
            visit(x.to_tuple())

    visit(out)
    return torch.cat(found)
