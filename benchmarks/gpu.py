"""A Llama of about 1B parameters on one GPU, bfloat16: step time and peak memory of the muP gauge
in both forms against the plain transformers model, eager and compiled, measured in one run.

python benchmarks/gpu.py [--modes eager compiled] [--steps 10] [--batch 4] [--seq 1024] [--json]
python benchmarks/gpu.py --tiny      # a small model on the CPU: checks that the script runs

Per (mode, model): the median step time over --steps timed steps after warm-up (CUDA events),
the memory allocated by one step beyond what was allocated before it
(``torch.cuda.max_memory_allocated``), and the bytes autograd keeps alive from forward to
backward beyond the parameters (as in memory.py). Ratios are to the plain model of the same mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memory import SavedBytes  # noqa: E402

import gaugeconv.hf as gh  # noqa: E402

MODELS = (("plain model", None), ("muP, plain form", "plain"),
          ("muP, materialized form", "materialized"))


def llama(tiny: bool, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if tiny:
        cfg = LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                          max_position_embeddings=128)
    else:  # about 1.0B parameters
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                          max_position_embeddings=2048, tie_word_embeddings=False)
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(name: str, form: str | None, mode: str, a: argparse.Namespace) -> dict:
    device = a.device
    dtype = torch.float32 if a.tiny else torch.bfloat16
    model = llama(a.tiny, dtype, device)
    if form is None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    else:
        config = gh.GaugeConfig(richness=0.5, gauge="mup", form=form,
                                base_width=model.config.hidden_size)  # its own base
        gh.apply_gauge(model, config)
        opt = gh.GaugeOptimizerFactory()(model, "adamw", lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids.to(device), "labels": ids.to(device)}
    call = torch.compile(model) if mode == "compiled" else model

    def step() -> None:
        call(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    times = []
    for _ in range(a.steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    out = {"model": name, "mode": mode, "step_ms": 1e3 * statistics.median(times)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    counter = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        loss = call(**batch).loss
    out["held_mb"] = counter.held() / 1e6
    counter.saved.clear()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        _sync(device)
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 1e6
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if device == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--tiny", action="store_true", help="a small model (CPU smoke test)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cpu" and not a.tiny:
        p.error("no CUDA device: run with --tiny for a CPU smoke test")
    if a.tiny:
        a.batch, a.seq, a.steps = 2, 64, 3
    rows = [run(name, form, mode, a) for mode in a.modes for name, form in MODELS]
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["model"] == "plain model")
        row["time_ratio"] = row["step_ms"] / base["step_ms"]
        row["held_ratio"] = row["held_mb"] / base["held_mb"] if base["held_mb"] else float("nan")
        if "peak_mb" in row:
            row["peak_ratio"] = row["peak_mb"] / base["peak_mb"]
    card = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    if a.json:
        print(json.dumps({"device": card, "torch": torch.__version__, "rows": rows}, indent=2))
        return 0
    print(f"{card}, torch {torch.__version__}, Llama {rows[0]['params_m']:.0f}M parameters, "
          f"batch {a.batch}x{a.seq}")
    for r in rows:
        peak = f"  peak {r['peak_mb']:9.1f} MB ({r['peak_ratio']:.3f}x)" if "peak_mb" in r else ""
        print(f"{r['mode']:8} {r['model']:24} step {r['step_ms']:8.1f} ms ({r['time_ratio']:.3f}x)"
              f"  held {r['held_mb']:9.1f} MB ({r['held_ratio']:.3f}x){peak}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
