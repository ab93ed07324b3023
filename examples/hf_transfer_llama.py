"""muTransfer on a tiny Llama through the Hugging Face Trainer: sweep the base learning rate at
several widths, once in the muP gauge at r = 1/2 (``GaugeTrainer``, one optimizer group per tensor)
and once as the standard parameterization that people train by default (a plain
``LlamaForCausalLM`` with transformers' own init, std 0.02, and the stock ``Trainer``'s AdamW with
one global lr), and compare how the optimal lr moves with width.

Run:  python examples/hf_transfer_llama.py [--widths 64,128,256] [--log2-lr=-11,1] [--steps 40]
      [--seeds 2] [--plot docs/transfer_hf_llama.png]

Tiny models from configs, synthetic token data (``gaugeconv.data.token_data``: arithmetic
progressions modulo a 64-token vocabulary), no downloads. Two layers, 4 heads whose size grows
with the width; the muP runs name the sweep's base once, ``GaugeConfig(base_width=64)`` (the
smallest width, as mup's set_base_shapes base), which gives every width richness 1/2's attention
logit scale 1/sqrt(d0) * d0/d_head with d0 = 16, the head dimension at the base (without a base
each width would be its own base and keep transformers' 1/sqrt(d_head); gaugeconv warns about
that for models built from scratch, ``--sqrt-d-attention`` runs it on purpose). AdamW without weight
decay and without gradient clipping, linear warm-up over 10% of the steps then linear decay. The
training loss is that of the whole training set after the last step. The default run (widths
64-256, 13 lrs, 2 seeds, 40 steps: 156 Trainer runs) took 4.5 minutes of CPU time (user + sys)
on the 2 shared cores of the development machine; a run at width 512 (--widths 64,128,256,512)
does about four times the arithmetic of one at 256.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback, Trainer, TrainingArguments

import gaugeconv.hf as gh
from gaugeconv.data import Dataset, token_data
from gaugeconv.diagnostics.optimum import lr_grid
from gaugeconv.diagnostics.transfer import analyse_sweep, lr_sweep
from gaugeconv.diagnostics.transfer_plots import plot_lr_sweeps

VOCAB, LENGTH = 64, 16


class Tokens(torch.utils.data.Dataset):
    """A token Dataset as the Trainer wants it (the model shifts the labels itself)."""

    def __init__(self, data: Dataset) -> None:
        self.ids = data.x

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_llama(width: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)  # transformers' own init (normal, std 0.02): the SP model
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB,
        max_position_embeddings=LENGTH, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def runner(kind: str, steps: int, train: Tokens, test: Tokens, out_dir: str,
           base_width: int | None = 64):
    """(width, seed, lr) -> final training and held-out loss, for 'mup' or 'sp'.

    base_width: the sweep's base width n0 (GaugeConfig(base_width=)): every width's attention
    logit scale is 1/sqrt(d0) * d0/d with d0 the head dimension at n0 (hf/base.py); None makes
    each width its own base (base_width=width), which keeps transformers' 1/sqrt(d).
    """

    def run(width: int, seed: int, lr: float) -> dict[str, float]:
        model = tiny_llama(width, seed)
        if kind == "mup":
            gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", optimizer="adam",
                                                 base_width=base_width or width))
            gh.initialize(model, seed)  # the init table of r = 1/2 (effective std per role)
        args = TrainingArguments(
            out_dir, max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
            lr_scheduler_type="linear", warmup_steps=max(1, steps // 10), weight_decay=0.0,
            max_grad_norm=0.0, seed=seed, data_seed=seed, save_strategy="no",
            logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
            log_level="error", per_device_eval_batch_size=256)
        cls = gh.GaugeTrainer if kind == "mup" else Trainer
        trainer = cls(model=model, args=args, train_dataset=train, eval_dataset=test)
        trainer.remove_callback(PrinterCallback)  # no log line per evaluation
        init_loss = trainer.evaluate(train)["eval_loss"]
        trainer.train()
        train_loss = trainer.evaluate(train)["eval_loss"]
        test_loss = trainer.evaluate(test)["eval_loss"]
        if not math.isfinite(train_loss):
            return {"init_loss": init_loss}
        return {"train_loss": train_loss, "test_loss": test_loss, "init_loss": init_loss}

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--log2-lr", default="-11,1", help="lr grid 2^LO .. 2^HI, one point per octave")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--plot", default="docs/transfer_hf_llama.png")
    p.add_argument("--sqrt-d-attention", action="store_true",
                   help="keep transformers' 1/sqrt(d_head) logit scale in the muP runs (the "
                   "pre-issue-13 setup) instead of richness 1/2's 1/d_head")
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    lo, hi = (float(x) for x in args.log2_lr.split(","))
    lrs = lr_grid(lo, hi, 1)
    train = Tokens(token_data(VOCAB, count=512, length=LENGTH, seed=0))
    test = Tokens(token_data(VOCAB, count=256, length=LENGTH, seed=1))
    start, cpu = time.perf_counter(), time.process_time()
    sweeps = {}
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp, \
            tqdm(total=2 * len(widths) * len(lrs) * args.seeds, unit="run") as bar:
        for kind in ("mup", "sp"):
            bar.set_postfix_str(kind)
            base = None if args.sqrt_d_attention else widths[0]  # the sweep's base width
            sweeps[kind] = lr_sweep(runner(kind, args.steps, train, test, tmp, base), widths,
                                    lrs, args.seeds, kind, bar=bar)
            analyse_sweep(sweeps[kind], "train_loss")
    print(f"\ntiny Llama (2 layers), AdamW, {args.steps} steps, {args.seeds} seeds, lr 2^{lo:g} .. "
          f"2^{hi:g}; {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s "
          "CPU of this process")
    for kind, sweep in sweeps.items():
        a = sweep.analysis
        opts = "  ".join(f"n={w}: {x:+.2f}" for w, x in zip(widths, a["optimum_log2_lr"]))
        best = "  ".join(f"{v:.3f}" for v in a["best_loss"])
        print(f"{kind:>4}: log2 lr* {opts}\n      drift {a['drift']:+.3f} +- {a['drift_stderr']:.3f}"
              f" per doubling: {a['transfer']}; best training loss per width {best}")
    plot_lr_sweeps([("tiny Llama, AdamW", sweeps)], args.plot,
                   f"muTransfer through the HF Trainer: tiny Llama on token progressions, "
                   f"{args.steps} steps, {args.seeds} seeds", richness=0.5)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
