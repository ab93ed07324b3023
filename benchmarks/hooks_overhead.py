"""Per-step training time of a tiny GPT-2 in muP gauge (multiplier hooks) against the same model
without gaugeconv, measured in one run. Prints the ratio.

python benchmarks/hooks_overhead.py [--width 256] [--layers 4] [--steps 30] [--json]
"""

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import gaugeconv.hf as gh


def make(width, layers):
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=width, n_layer=layers, n_head=8, vocab_size=2048, n_positions=128,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def step_times(model, opt, batch, steps):
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[3:]  # drop warm-up


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    ids = torch.randint(0, 2048, (8, 128), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}

    plain = make(a.width, a.layers)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    gauged = gh.apply_gauge(make(a.width, a.layers), gh.GaugeConfig(richness=0.5, gauge="mup"))
    gauged_opt = gh.GaugeOptimizerFactory()(gauged, "adamw", lr=1e-3)
    results = {"plain": [], "mup": []}
    for _ in range(3):  # interleave to share the machine's noise fairly
        results["plain"] += step_times(plain, plain_opt, batch, a.steps // 3)
        results["mup"] += step_times(gauged, gauged_opt, batch, a.steps // 3)
    med = {k: statistics.median(v) for k, v in results.items()}
    out = {
        "model": f"GPT-2, width {a.width}, {a.layers} layers, batch 8 x 128 tokens, AdamW",
        "median_step_s": med,
        "ratio_mup_over_plain": med["mup"] / med["plain"],
        "hooked_modules": gh.get_gauged(gauged).hooks.active,
        "groups": len(gauged_opt.param_groups),
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(out["model"])
        print(f"plain transformers: {med['plain'] * 1e3:.1f} ms/step")
        print(f"muP gauge (hooks on {out['hooked_modules']} modules, {out['groups']} groups): "
              f"{med['mup'] * 1e3:.1f} ms/step")
        print(f"ratio: {out['ratio_mup_over_plain']:.3f}")


if __name__ == "__main__":
    main()
