"""Train a tiny GPT-2 and a tiny Llama with the Hugging Face Trainer in two gauges of one
richness and print the loss curves side by side: the default (the plain form, here labelled
muP: a plain model with the gauge's per-tensor optimizer groups) and muP's materialized form
(stored tensors w = W/m, multipliers in the forward, one global learning rate).

Run:  python examples/hf_trainer_two_gauges.py      (tiny models from configs, no downloads)
"""

import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainingArguments

import gaugeconv.hf as gh

VOCAB, LENGTH, STEPS = 61, 16, 20


class Progressions(torch.utils.data.IterableDataset):
    """Arithmetic progressions modulo the vocabulary: a learnable toy language."""

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        while True:
            start = torch.randint(0, VOCAB - 1, (1,), generator=gen)
            step = torch.randint(1, 4, (1,), generator=gen)
            ids = (start + step * torch.arange(LENGTH)) % (VOCAB - 1) + 1
            labels = ids.clone()
            labels[0] = -100
            yield {"input_ids": ids, "labels": labels}


def tiny(arch):
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                          n_positions=LENGTH, resid_pdrop=0, embd_pdrop=0,
                                          attn_pdrop=0, bos_token_id=0, eos_token_id=0))
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        vocab_size=VOCAB, max_position_embeddings=LENGTH,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def train(arch, form, out_dir):
    # base_width=64: this width-64 model is its own base (no sweep; without it gaugeconv warns)
    model = gh.apply_gauge(tiny(arch), gh.GaugeConfig(richness=0.5, gauge="mup", optimizer="adam",
                                                      form=form, base_width=64))
    args = TrainingArguments(out_dir, max_steps=STEPS, per_device_train_batch_size=8,
                             learning_rate=0.3, lr_scheduler_type="linear", warmup_steps=4,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, log_level="error")
    trainer = gh.GaugeTrainer(model=model, args=args, train_dataset=Progressions())
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


if __name__ == "__main__":
    for arch in ("gpt2", "llama"):
        with tempfile.TemporaryDirectory() as tmp:
            stp, mup = train(arch, "plain", tmp), train(arch, "materialized", tmp)
        print(f"\n{arch}: muP gauge at r = 1/2, AdamW, base lr 0.3, {STEPS} steps")
        print(f"{'step':>4}  {'plain form':>12}  {'materialized':>12}")
        for k, (a, b) in enumerate(zip(stp, mup)):
            print(f"{k:>4}  {a:>12.6f}  {b:>12.6f}")
        worst = max(abs(a - b) / abs(a) for a, b in zip(stp, mup))
        print(f"largest relative difference: {worst:.1e} (float32)")
