"""Wall time and peak memory of `gaugeconv convert` against a plain copy loop, in one run.

For each size (GB of float32 GPT-2 weights, in shards of about 0.5 GB: 2 GB -> 4 shards), each
command runs in its own process (whole-process wall time, imports included; peak RSS from
wait4), alternating, ``--repeats`` times; the medians are compared:
  copy     a plain read/write loop over the same files, fsync per file (what any conversion
           costs at least)
  convert  `gaugeconv convert SRC DST --to mup -r 0.5 --stored` (STP -> muP gauge, stored
           tensors: every tensor scaled, every factor a power of two: the worst case)
  default  `gaugeconv convert SRC DST --to mup -r 0.5` (the default, effective tensors: a plain
           SRC's weights are copied as raw bytes)
  naive    (with --naive) from_pretrained + apply_gauge + save_pretrained, the whole model in
           memory
  imports  the fixed part of convert: importing torch and the transformers model class alone
Each conversion's time is split into phases from its own report: process (the interpreter's
start and exit and gaugeconv's command line: what its report does not cover), import (torch,
transformers, the model class), planning (every check, the model on the meta device, the plan),
writing (the hidden folder's creation to DST in place) and rest (removing an old DST).
The page cache is warm for SRC (it is read by every run). Generated models and outputs are
deleted at the end.

python benchmarks/convert.py [--sizes 2,8] [--repeats 3] [--dir DIR] [--naive] [--json]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

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

# the fixed cost inside `convert`: torch and the transformers model class (out is created so
# that the loop below can remove it)
IMPORTS = """
import os, sys
import gaugeconv.checkpoint, gaugeconv.hf.inspect, transformers
transformers.GPT2LMHeadModel
os.makedirs(sys.argv[1])
"""

# A small launcher: a child forked from this process would count our pages in its peak RSS;
# one forked from a fresh interpreter counts only its own.
RUNNER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
seconds = time.perf_counter() - t0
use = resource.getrusage(resource.RUSAGE_CHILDREN)
try:
    report = json.loads(p.stdout)
except ValueError:
    report = {}
print(json.dumps({"rc": p.returncode, "seconds": seconds, "peak_rss_kb": use.ru_maxrss,
                  "cpu": use.ru_utime + use.ru_stime, "report": report,
                  "stderr": p.stderr.decode()[-2000:]}))
"""


def make_model(folder, gigabytes, shard_gb=0.5):
    """A GPT-2 (n_embd 2048) of about that size, written shard by shard (random blocks)."""
    import torch
    from safetensors.numpy import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    layers = round(5 * gigabytes)
    cfg = GPT2Config(n_embd=2048, n_layer=layers, n_head=16, vocab_size=8192, n_positions=512,
                     bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GPT2LMHeadModel(cfg).state_dict().items()
                  if k != "lm_head.weight"}
    os.makedirs(folder)
    cfg.save_pretrained(folder)
    block = (np.random.default_rng(0).standard_normal(1 << 22) * 0.02).astype(np.float32)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        current[name] = np.resize(block, n).reshape(shape)
        size += n * 4
        if size >= shard_gb * 2**30:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
        total += sum(t.nbytes for t in shard.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def measure(cmd):
    out = subprocess.run([sys.executable, "-c", RUNNER, *cmd], capture_output=True, text=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {result['stderr']}")
    out = {"seconds": result["seconds"], "peak_rss_mb": result["peak_rss_kb"] / 1024,
           "cpu": result["cpu"]}
    report = result["report"]
    if "seconds_writing" in report:  # a conversion: its phases
        inside = report["seconds_import"] + report["seconds"]
        out["phases"] = {
            "process": max(0.0, result["seconds"] - inside),
            "import": report["seconds_import"],
            "planning": report["seconds_planning"],
            "writing": report["seconds_writing"],
            "rest": report["seconds"] - report["seconds_planning"] - report["seconds_writing"],
        }
    return out


PHASES = ("process", "import", "planning", "writing", "rest")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2", help="model sizes in GB, e.g. 2,8")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per command")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--naive", action="store_true", help="also time from_pretrained+save_pretrained")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="gaugeconv-bench-", dir=a.dir)
    results = []
    try:
        for gb in (float(x) for x in a.sizes.split(",")):
            src = os.path.join(root, f"src-{gb:g}gb")
            make_model(src, gb)
            files = [f for f in os.listdir(src) if f.endswith(".safetensors")]
            size = sum(os.path.getsize(os.path.join(src, f)) for f in files)
            out = os.path.join(root, "out")
            runs = {
                "copy": [sys.executable, "-c", COPY, src, out],
                "convert": [sys.executable, "-m", "gaugeconv", "convert", src, out, "--to",
                            "mup", "-r", "0.5", "--stored", "--json"],
                "default": [sys.executable, "-m", "gaugeconv", "convert", src, out, "--to",
                            "mup", "-r", "0.5", "--json"],
            }
            if a.naive:
                runs["naive"] = [sys.executable, "-c", NAIVE, src, out]
            runs["imports"] = [sys.executable, "-c", IMPORTS, out]
            samples = {name: [] for name in runs}
            for _ in range(a.repeats):
                for name, cmd in runs.items():
                    samples[name].append(measure(cmd))
                    shutil.rmtree(out)
            row = {"model_gb": size / 2**30, "shards": len(files)}
            for name, got in samples.items():
                row[name] = {
                    "seconds": statistics.median(s["seconds"] for s in got),
                    "all_seconds": [round(s["seconds"], 2) for s in got],
                    "cpu_seconds": statistics.median(s["cpu"] for s in got),
                    "peak_rss_mb": max(s["peak_rss_mb"] for s in got),
                }
            for name in ("convert", "default"):
                # each phase's median over the runs; writing (hidden folder to DST in place)
                # is also compared with the whole copy loop
                row[name]["phases"] = {p: statistics.median(s["phases"][p] for s in samples[name])
                                       for p in PHASES}
                row[name]["vs_copy"] = row[name]["seconds"] / row["copy"]["seconds"]
                row[name]["writing_vs_copy"] = (row[name]["phases"]["writing"]
                                                / row["copy"]["seconds"])
            row["time_vs_copy"] = row["convert"]["vs_copy"]  # the headline: the worst case
            row["gb_per_s"] = {n: row["model_gb"] / row[n]["seconds"] for n in runs}
            results.append(row)
            shutil.rmtree(src)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps(results, indent=2))
        return
    for row in results:
        print(f"\nmodel {row['model_gb']:.2f} GB in {row['shards']} shards "
              f"(median of {a.repeats} alternating runs)")
        for name in ("copy", "convert", "default", "naive", "imports"):
            if name in row:
                r = row[name]
                print(f"  {name:<8} {r['seconds']:7.2f} s  ({row['gb_per_s'][name]:.2f} GB/s; "
                      f"runs {r['all_seconds']}; CPU {r['cpu_seconds']:.1f} s)  peak RSS "
                      f"{r['peak_rss_mb']:7.0f} MB")
        for name, what in (("convert", "--stored, every tensor scaled"),
                           ("default", "effective, weights copied raw")):
            r = row[name]
            phases = ", ".join(f"{p} {r['phases'][p]:.2f} s" for p in PHASES)
            print(f"  {name} / copy ({what}): whole process {r['vs_copy']:.2f}x; phases: {phases}; "
                  f"writing / copy {r['writing_vs_copy']:.2f}x")


if __name__ == "__main__":
    main()
