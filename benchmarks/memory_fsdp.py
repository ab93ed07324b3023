"""Per-rank memory of an FSDP2 training step: a plain Llama against its muP gauge in both forms.

torchrun --nproc_per_node 2 benchmarks/memory_fsdp.py [--width 1024] [--layers 8] [--json]

Each rank builds the three models of ``memory.py`` (plain transformers, muP plain form, muP
materialized form), shards every decoder layer and the root with ``fully_shard`` (gloo on CPU,
nccl on CUDA), and measures one step as ``memory.py`` does: the bytes autograd keeps alive from
forward to backward beyond the (sharded) parameters, counted after the forward, when FSDP2 has
freed the unsharded weights (a storage it freed counts 0; a product m * w kept for backward, the
old materialized form's cost, would count in full), and the peak. Rank 0 prints ratios to the
plain model, per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memory import VOCAB, _exec_with_mmap_threshold, make, measure_step  # noqa: E402

import gaugeconv.hf as gh  # noqa: E402


def step(model, batch, device: str) -> dict[str, int]:
    opt = gh.GaugeOptimizerFactory()(model, "adamw", lr=1e-4) if "_gaugeconv" in \
        model.__dict__ else torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):  # warm-up
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    result = measure_step(model, model, batch, device, after_backward=opt.step)
    opt.zero_grad(set_to_none=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    from datetime import timedelta

    from torch.distributed.fsdp import fully_shard

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo",
                                         timeout=timedelta(minutes=10))
    try:
        ids = torch.randint(0, VOCAB, (a.batch * world, a.seq),
                            generator=torch.Generator().manual_seed(0)).chunk(world)[rank]
        batch = {"input_ids": ids.to(device), "labels": ids.to(device)}
        results = {}
        for name, form in (("plain model", None), ("muP, plain form", "plain"),
                           ("muP, materialized form", "materialized")):
            model = make("llama", a.width, a.layers, a.seq, torch.float32).to(device)
            if form is not None:
                config = gh.GaugeConfig(richness=0.5, gauge="mup", form=form,
                                        base_width=model.config.hidden_size)  # its own base
                gh.apply_gauge(model, config)
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            results[name] = step(model, batch, device)
            del model
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, results)
        if rank == 0:
            _report(gathered, a, device)
    finally:
        torch.distributed.destroy_process_group()
    return 0


def _report(per_rank: list[dict], a: argparse.Namespace, device: str) -> None:
    rows = []
    for rank, results in enumerate(per_rank):
        base = results["plain model"]
        for name, r in results.items():
            rows.append({"rank": rank, "model": name, "held_mb": r["held"] / 1e6,
                         "peak_mb": r["peak"] / 1e6,
                         "held_ratio": r["held"] / base["held"] if base["held"] else float("nan"),
                         "peak_ratio": r["peak"] / base["peak"] if base["peak"] > 0
                         else float("nan")})
    if a.json:
        print(json.dumps({"device": device, "world": len(per_rank), "rows": rows}, indent=2))
        return
    print(f"FSDP2 ({device}, {len(per_rank)} ranks), Llama width {a.width}, {a.layers} layers, "
          f"batch {a.batch}x{a.seq} per rank; held = saved for backward beyond the parameters")
    for r in rows:
        print(f"rank {r['rank']} {r['model']:24} held {r['held_mb']:8.1f} MB "
              f"({r['held_ratio']:.3f}x)  peak {r['peak_mb']:8.1f} MB ({r['peak_ratio']:.3f}x)")


if __name__ == "__main__":
    _exec_with_mmap_threshold()  # RSS follows the live tensors (memory.py)
    raise SystemExit(main())
