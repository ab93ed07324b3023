"""Memory of a training step: a plain model against the same model gauged (muP) in both forms.

For each architecture and mode (eager, compiled, gradient checkpointing) three models are built
from one seed: the plain transformers model (no gaugeconv), the plain form of the muP gauge
(``GaugeConfig(richness=0.5)``, the default) and its materialized form
(``form="materialized"``). Measured per model, in one run, and printed as ratios to the plain
model:

* held: the bytes that autograd keeps alive from the forward to the backward beyond the
  parameters themselves (the unique storages of every tensor saved for backward, as seen by
  ``torch.autograd.graph.saved_tensors_hooks``; a storage FSDP2 frees after the forward counts
  what it holds then). Exact and repeatable on any device.
* peak: on CUDA, ``torch.cuda.max_memory_allocated`` over a step minus the memory allocated
  before it; on CPU, the rise of the process's peak RSS over a step (VmHWM, reset through
  /proc/self/clear_refs). glibc keeps freed heap pages, so the script re-executes itself with
  ``MALLOC_MMAP_THRESHOLD_`` set: every allocation over 64 KiB is its own mapping, returned to
  the system when freed, and RSS follows the live tensors.

python benchmarks/memory.py [--archs gpt2 llama] [--modes eager compiled checkpointed]
    [--width 1024] [--layers 8] [--batch 1] [--seq 32] [--device cpu|cuda] [--dtype float32]
    [--json]

FSDP2 per rank: ``torchrun --nproc_per_node 2 benchmarks/memory_fsdp.py`` (same measures).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

import torch
from tqdm import tqdm

import gaugeconv.hf as gh

VOCAB = 2048


def make(arch: str, width: int, layers: int, seq: int, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=width, n_layer=layers, n_head=8, vocab_size=VOCAB, n_positions=seq,
                         resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=4, vocab_size=VOCAB,
                          max_position_embeddings=seq, bos_token_id=0, eos_token_id=0,
                          pad_token_id=0)
        model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def variants(arch: str, a: argparse.Namespace, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    out = {"plain model": make(arch, a.width, a.layers, a.seq, dtype)}
    for form in ("plain", "materialized"):
        model = make(arch, a.width, a.layers, a.seq, dtype)
        config = gh.GaugeConfig(richness=0.5, gauge="mup", form=form,
                                base_width=model.config.hidden_size)  # its own base
        gh.apply_gauge(model, config)
        out[f"muP, {form} form"] = model
    return out


class SavedBytes:
    """Unique storages saved for backward that are not parameters' storages."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = set()
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2's sharded DTensor
            self.params.add(local.untyped_storage().data_ptr())
        self.saved: list[torch.Tensor] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saved.append(t)
        return t

    def held(self) -> int:
        seen: dict[int, int] = {}
        for t in self.saved:
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # a tensor without storage (a subclass)
                continue
            ptr = storage.data_ptr()
            if ptr and ptr not in self.params:
                seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return sum(seen.values())


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_step(model: torch.nn.Module, call, batch: dict, device: str,
                 after_backward=lambda: None) -> dict[str, int]:
    """One measured step of ``call`` (the model or its compiled form): held and peak bytes."""
    gc.collect()  # garbage of earlier models (gauged models hold cycles) must not be freed mid-step
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        before = _rss("VmRSS")
    counter = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        loss = call(**batch).loss
    held = counter.held()
    counter.saved.clear()
    loss.backward()
    after_backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss("VmHWM") - before
    return {"held": held, "peak": peak}


def measure(model: torch.nn.Module, mode: str, batch: dict, device: str) -> dict[str, int]:
    if mode == "checkpointed":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    call = torch.compile(model) if mode == "compiled" else model
    for _ in range(2):  # warm-up (and compilation)
        call(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    result = measure_step(model, call, batch, device)
    model.zero_grad(set_to_none=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["gpt2", "llama"])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled", "checkpointed"])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    ids = torch.randint(0, VOCAB, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids.to(a.device), "labels": ids.to(a.device)}
    rows = []
    jobs = [(arch, mode) for arch in a.archs for mode in a.modes]
    for arch, mode in tqdm(jobs, desc="memory", disable=a.json):
        models = variants(arch, a, dtype)
        params = sum(q.numel() * q.element_size() for q in models["plain model"].parameters())
        result = {}
        for name, model in models.items():
            result[name] = measure(model.to(a.device), mode, batch, a.device)
            model.to("cpu")
        base = result["plain model"]
        for name, r in result.items():
            rows.append({
                "arch": arch, "mode": mode, "model": name, "params_mb": params / 1e6,
                "held_mb": r["held"] / 1e6, "peak_mb": r["peak"] / 1e6,
                "held_ratio": r["held"] / base["held"] if base["held"] else float("nan"),
                "peak_ratio": r["peak"] / base["peak"] if base["peak"] > 0 else float("nan"),
            })
        torch._dynamo.reset()
    if a.json:
        print(json.dumps({"device": a.device, "rows": rows}, indent=2))
        return 0
    print(f"device {a.device}, {a.dtype}, width {a.width}, {a.layers} layers, batch "
          f"{a.batch}x{a.seq}; held = saved for backward beyond the parameters")
    print(f"{'arch':6} {'mode':13} {'model':24} {'params MB':>9} {'held MB':>9} {'held/plain':>10} "
          f"{'peak MB':>9} {'peak/plain':>10}")
    for r in rows:
        print(f"{r['arch']:6} {r['mode']:13} {r['model']:24} {r['params_mb']:9.1f} "
              f"{r['held_mb']:9.1f} {r['held_ratio']:10.3f} {r['peak_mb']:9.1f} "
              f"{r['peak_ratio']:10.3f}")
    return 0


def _exec_with_mmap_threshold() -> None:
    """Re-run this script with glibc returning freed tensors to the system (see the docstring)."""
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _exec_with_mmap_threshold()
    raise SystemExit(main())
