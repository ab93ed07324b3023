"""Training-step time of a model in muP gauge, in both forms, against the same model without
gaugeconv, eager and compiled, measured in one run (GPT-2 and Llama, 4 layers, width 256).

Three models from one seed: the plain transformers model with one AdamW group, the muP gauge in
the plain form (the default: a plain model with the gauge's per-tensor groups) and in the
materialized form (stored tensors, multipliers in the forward). They alternate step by step in
rounds so that the machine's noise is shared; each ratio is the median of the per-round ratios
of median step times, and the spread (min..max over rounds) says how noisy the machine was.

python benchmarks/step_time.py [--archs gpt2 llama] [--modes eager compiled]
    [--width 256] [--layers 4] [--rounds 5] [--steps 6] [--clock wall|cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from tqdm import tqdm

import gaugeconv.hf as gh

VOCAB, SEQ, BATCH = 2048, 128, 8


def make(arch: str, width: int, layers: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=width, n_layer=layers, n_head=8, vocab_size=VOCAB, n_positions=SEQ,
                         resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=4, vocab_size=VOCAB,
                      max_position_embeddings=SEQ, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def step_times(call, opt, batch, steps: int, clock=time.perf_counter) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        call(**batch).loss.backward()
        opt.step()
        times.append(clock() - t0)
    return times


FORMS = ("plain", "materialized")


def measure(arch: str, mode: str, a: argparse.Namespace, bar) -> dict:
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    plain = make(arch, a.width, a.layers)
    runs = {"model": (plain, torch.optim.AdamW(plain.parameters(), lr=1e-4))}
    for form in FORMS:
        gauged = gh.apply_gauge(make(arch, a.width, a.layers),  # its own base width
                                gh.GaugeConfig(richness=0.5, form=form, base_width=a.width))
        runs[form] = (gauged, gh.GaugeOptimizerFactory()(gauged, "adamw", lr=1e-4))
    per_tensor = gh.GaugeOptimizerFactory()(runs["materialized"][0], "adamw", lr=1e-4, merge=False)
    calls = {k: (torch.compile(m) if mode == "compiled" else m) for k, (m, _) in runs.items()}
    for key, (_, opt) in runs.items():  # warm-up (and compilation)
        step_times(calls[key], opt, batch, 2)
    rounds: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(a.rounds):
        times: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(a.steps):  # alternate step by step: all see the same load
            for key, (_, opt) in runs.items():
                times[key] += step_times(calls[key], opt, batch, 1, CLOCKS[a.clock])
        for key in rounds:
            rounds[key].append(statistics.median(times[key]))
        bar.update(1)
    ratios = {form: [m / p for m, p in zip(rounds[form], rounds["model"])] for form in FORMS}
    return {
        "arch": arch, "mode": mode, "clock": a.clock,
        "median_step_ms": {k: 1e3 * statistics.median(v) for k, v in rounds.items()},
        "ratio_over_plain": {f: statistics.median(r) for f, r in ratios.items()},
        "ratio_spread": {f: [min(r), max(r)] for f, r in ratios.items()},
        "gauged_modules": {f: gh.get_gauged(runs[f][0]).hooks.active for f in FORMS},
        "optimizer_groups": len(runs["materialized"][1].param_groups),
        "optimizer_groups_one_per_tensor": len(per_tensor.param_groups),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                   choices=["eager", "compiled"])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="steps per model per round")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (steadier on a shared machine "
                        "when OMP_NUM_THREADS=1)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    results = []
    with tqdm(total=len(a.archs) * len(a.modes) * a.rounds, desc="rounds", disable=a.json) as bar:
        for arch in a.archs:
            for mode in a.modes:
                results.append(measure(arch, mode, a, bar))
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(f"training step, AdamW, batch {BATCH} x {SEQ} tokens, width {a.width}, {a.layers} layers, "
          f"{a.clock} clock; muP gauge in each form against the plain model")
    for r in results:
        ms = r["median_step_ms"]
        parts = []
        for form in FORMS:
            lo, hi = r["ratio_spread"][form]
            parts.append(f"{form} {ms[form]:7.1f} ms ratio {r['ratio_over_plain'][form]:.3f} "
                         f"({lo:.3f}..{hi:.3f})")
        print(f"{r['arch']:6s} {r['mode']:8s} plain model {ms['model']:7.1f} ms | "
              + " | ".join(parts)
              + f" | {r['gauged_modules']['materialized']} modules swapped when materialized, "
              f"{r['optimizer_groups']} groups ({r['optimizer_groups_one_per_tensor']} if one "
              "per tensor)")


if __name__ == "__main__":
    main()
