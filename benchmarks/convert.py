"""Wall time and peak memory of `gaugeconv convert` against two baselines, measured in one run.

For a GPT-2 of about 1 GB (float32, one model.safetensors) and one of about 2 GB (sharded), each
measured in its own process (peak RSS from wait4):
  copy   a plain read/write loop over the same files (what any conversion costs at least)
  convert `gaugeconv convert SRC DST --to mup` (STP -> muP gauge, r = 1/2, streaming)
  naive  from_pretrained + apply_gauge + save_pretrained (the whole model in memory)

python benchmarks/convert.py [--sizes 1,2] [--dir DIR] [--json]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

COPY = """
import os, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for name in sorted(os.listdir(src)):
    with open(os.path.join(src, name), 'rb') as fin, open(os.path.join(dst, name), 'wb') as fout:
        while True:
            block = fin.read(16 << 20)
            if not block:
                break
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
"""

NAIVE = """
import sys
from transformers import AutoModelForCausalLM
import gaugeconv.hf as gh
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup"))
model.save_pretrained(sys.argv[2])
"""


def make_model(folder, gigabytes, shard_gb):
    """A GPT-2 config of about that size, with random weights written shard by shard."""
    layers = 5 * gigabytes
    cfg = GPT2Config(n_embd=2048, n_layer=layers, n_head=16, vocab_size=8192, n_positions=512,
                     bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT2LMHeadModel(cfg).state_dict().items()
                  if k != "lm_head.weight"}
    os.makedirs(folder)
    cfg.save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        current[name] = torch.randn(shape, generator=gen) * 0.02
        size += current[name].numel() * 4
        if size >= shard_gb * 2**30:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
        total += sum(t.numel() * 4 for t in shard.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


# A small launcher: a child forked from this (large) process would count our pages in its peak
# RSS; one forked from a fresh interpreter counts only its own.
RUNNER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": p.returncode, "seconds": seconds, "peak_rss_kb": rss,
                  "stderr": p.stderr.decode()[-2000:]}))
"""


def measure(cmd):
    out = subprocess.run([sys.executable, "-c", RUNNER, *cmd], capture_output=True, text=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {result['stderr']}")
    return {"seconds": result["seconds"], "peak_rss_mb": result["peak_rss_kb"] / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,2", help="model sizes in GB; sizes > 1 are sharded")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    root = a.dir or tempfile.mkdtemp(prefix="gaugeconv-bench-")
    results = []
    try:
        for gb in (int(x) for x in a.sizes.split(",")):
            src = os.path.join(root, f"src-{gb}gb")
            make_model(src, gb, shard_gb=0.5 if gb > 1 else gb + 1)
            files = [f for f in os.listdir(src) if f.endswith(".safetensors")]
            size = sum(os.path.getsize(os.path.join(src, f)) for f in files)
            row = {"model_gb": size / 2**30, "shards": len(files)}
            runs = {
                "copy": [sys.executable, "-c", COPY, src, os.path.join(root, "copy")],
                "convert": [sys.executable, "-m", "gaugeconv", "convert", src,
                            os.path.join(root, "conv"), "--to", "mup", "-r", "0.5", "--json"],
                "naive": [sys.executable, "-c", NAIVE, src, os.path.join(root, "naive")],
            }
            for name, cmd in runs.items():
                row[name] = measure(cmd)
                shutil.rmtree(os.path.join(root, {"copy": "copy", "convert": "conv",
                                                  "naive": "naive"}[name]))
            for base in ("copy", "naive"):
                row[f"time_vs_{base}"] = row["convert"]["seconds"] / row[base]["seconds"]
                row[f"rss_vs_{base}"] = row["convert"]["peak_rss_mb"] / row[base]["peak_rss_mb"]
            results.append(row)
            shutil.rmtree(src)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps(results, indent=2))
        return
    for row in results:
        print(f"\nmodel {row['model_gb']:.2f} GB in {row['shards']} file(s)")
        for name in ("copy", "convert", "naive"):
            r = row[name]
            print(f"  {name:<8} {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MB")
        print(f"  convert / copy : time {row['time_vs_copy']:.2f}x, peak RSS {row['rss_vs_copy']:.2f}x")
        print(f"  convert / naive: time {row['time_vs_naive']:.2f}x, peak RSS {row['rss_vs_naive']:.2f}x")


if __name__ == "__main__":
    main()
