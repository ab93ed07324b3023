"""Small Hugging Face transformers as coordinate-check families (THEORY.md sections 6 and 7).

``transformer_factory(arch, r, optimizer)`` builds, per width n and seed, a 2-layer Llama or
GPT-2 with a fixed head count (so the head dimension d = n / heads grows with width), puts it at
richness r in the muP gauge and draws its weights by the init table. The attention logit scale
follows the richness (hf/attention.py: the architecture's own scale at the base width, moved by
d0/d); ``attention="sqrt"`` keeps every width's own 1/sqrt(d) instead, the negative control.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model import GaugedModel

__all__ = ["ARCHS", "ATTENTION", "transformer_factory"]

ARCHS = ("llama", "gpt2")
ATTENTION = {
    "richness": "logit scale (1/sqrt(d0)) * d0/d: the architecture's own at the base width",
    "sqrt": "negative control: every width keeps its own 1/sqrt(d)",
}


def _build(arch: str, width: int, heads: int, layers: int, vocab: int, length: int):
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=heads, vocab_size=vocab,
                          max_position_embeddings=length, bos_token_id=0, eos_token_id=0,
                          tie_word_embeddings=False)
        return LlamaForCausalLM(cfg)
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_embd=width, n_layer=layers, n_head=heads, vocab_size=vocab,
                         n_positions=length, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
        return GPT2LMHeadModel(cfg)
    raise ValueError(f"unknown architecture {arch!r}; known: {list(ARCHS)}")


def transformer_factory(
    arch: str, richness: float, optimizer: str = "adam", *, base_width: int = 64,
    heads: int = 4, layers: int = 2, vocab: int = 64, length: int = 16,
    attention: str = "richness", dtype: torch.dtype = torch.float32,
) -> Callable[[int, int], GaugedModel]:
    """factory(width, seed) -> GaugedModel for ``coord_check`` (base head dim base_width/heads)."""
    from .. import hf as gh

    if attention not in ATTENTION:
        raise ValueError(f"unknown attention setup {attention!r}; known: {list(ATTENTION)}")
    _build(arch, heads, heads, 1, vocab, length)  # validates arch early
    base = base_width // heads if attention == "richness" else None

    def factory(width: int, seed: int) -> GaugedModel:
        torch.manual_seed(seed)
        model = _build(arch, width, heads, layers, vocab, length).to(dtype)
        config = gh.GaugeConfig(richness=richness, gauge="mup", optimizer=optimizer,
                                attention_base_head_dim=base)
        return gh.get_gauged(gh.initialize(gh.apply_gauge(model, config), seed))

    return factory
