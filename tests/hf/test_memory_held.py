"""Issue 16's memory contract: a gauged model keeps no weight-sized product alive for backward.

What autograd saves from the forward to the backward is counted exactly (the unique storages of
the tensors ``saved_tensors_hooks`` sees, minus the parameters' own): the same bytes as the plain
model in both forms. The negative control builds the materialized form without its
activation-side forwards (``m * w`` formed in the forward, version 0.2's design): it must hold at
least one more copy of the gauged matrices.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import gaugeconv.hf as gh
from gaugeconv.materialized import gauged_class


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=16,
                         resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0,
                         eos_token_id=0)
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                      max_position_embeddings=16, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def _held_and_loss(model: torch.nn.Module) -> tuple[int, torch.Tensor]:
    """Bytes saved for backward beyond the parameters, and the loss (for the function check)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    ids = torch.arange(32).reshape(2, 16) % 128
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    seen: dict[int, int] = {}
    for t in saved:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
    loss.backward()
    return sum(seen.values()), loss.detach()


def _gauged(arch: str, form: str) -> torch.nn.Module:
    model = _model(arch)
    gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", form=form, base_width=64))
    return model


def _matrix_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("form", ["plain", "materialized"])
def test_held_for_backward_equals_the_plain_model(arch: str, form: str) -> None:
    plain_held, plain_loss = _held_and_loss(_model(arch))
    held, loss = _held_and_loss(_gauged(arch, form))
    assert held == plain_held
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=0)  # float32, same function


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_negative_control_products_in_the_forward_hold_the_weights(
        arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plain_held, _ = _held_and_loss(_model(arch))
    monkeypatch.setattr(gauged_class, "scaled_forward_for", lambda base: None)
    held, _ = _held_and_loss(_gauged(arch, "materialized"))
    # every gauged matrix except the embedding (whose backward does not save the weight) is held
    # once more as its product m * w
    assert held - plain_held >= _matrix_bytes(_model(arch)) // 2
