"""Tiny Hugging Face models built from configs (no downloads) and a Trainer run for tests."""

from __future__ import annotations

import contextlib
import json

import torch

ARCHS = ("gpt2", "llama-tied", "llama", "bert")
VOCAB = 61


def build(arch: str, width: int = 48, seed: int = 0, dtype=torch.float32):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=width, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                         eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    elif arch.startswith("llama"):
        cfg = LlamaConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                          max_position_embeddings=32, tie_word_embeddings=arch == "llama-tied",
                          bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = LlamaForCausalLM(cfg)
    elif arch == "bert":
        cfg = BertConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=32,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
        model = BertForMaskedLM(cfg)
    else:
        raise ValueError(arch)
    return model.to(dtype)


def batch(arch: str, n: int = 4, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # learnable sequences: arithmetic progressions modulo the vocabulary (token 0 is padding)
    start = torch.randint(0, VOCAB - 1, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    ids = (start + step * torch.arange(length)) % (VOCAB - 1) + 1
    labels = ids.clone()
    labels[:, 0] = -100  # never predicted; makes the Trainer's token count shift-independent
    out = {"input_ids": ids, "labels": labels}
    if arch == "bert":
        out["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(n, -1).clone()
        mask = torch.rand(n, length, generator=gen) < 0.3
        out["labels"] = torch.where(mask, ids, torch.full_like(ids, -100))
        out["input_ids"] = torch.where(mask, torch.full_like(ids, 1), ids)
    return out


class Stream(torch.utils.data.IterableDataset):
    """The same sequence of examples every time (no shuffling, so a hand-written loop can match)."""

    def __init__(self, arch: str, count: int = 400, length: int = 12):
        self.arch, self.count, self.length = arch, count, length

    def __iter__(self):
        data = batch(self.arch, self.count, self.length, seed=7)
        for i in range(self.count):
            yield {k: v[i] for k, v in data.items()}


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def training_args(out_dir: str, optimizer: str, steps: int, **kw):
    from transformers import TrainingArguments

    args = dict(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=4, learning_rate=0.05,
        lr_scheduler_type="linear", warmup_steps=3, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, optim="adamw_torch" if optimizer == "adamw" else "sgd",
        weight_decay=0.01, max_grad_norm=1.0, dataloader_num_workers=0, disable_tqdm=True,
        adam_epsilon=1e-8,
    )
    args.update(kw)
    return TrainingArguments(**args)


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def dump(path: str, **data) -> None:
    with open(path, "w") as f:
        json.dump(data, f)


def loss_func(arch: str):
    """Cross-entropy in the logits' own dtype. transformers' built-in losses upcast logits with
    .float(), which turns float64 logits into float32, so float64 checks need this one."""

    def compute(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits
        if arch != "bert":  # causal LM: predict the next token
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
            reduction="sum",
        )
        count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
        return loss / count

    return compute
