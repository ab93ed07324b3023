"""Train a tiny gauged Llama under FSDP2 (fully_shard) in STP and muP gauge; run with torchrun.

STP runs in the plain form (the default), muP in the materialized form: the two forms must train
alike under sharding too.

python -m torch.distributed.run --nproc_per_node 2 tests/hf/fsdp_script.py STEPS RESULT.json

Without torchrun (no RANK in the environment) the same loop runs unsharded in one process.
The process group has a short timeout (a hung collective fails the run instead of blocking it)
and is destroyed without any collective once the result is written.
"""

import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import gaugeconv.hf as gh  # noqa: E402
from tests.hf.tiny import VOCAB, batch, default_dtype, loss_func  # noqa: E402

PG_TIMEOUT_S = 120  # any collective of this tiny run takes milliseconds


def model_in(gauge):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    form = "plain" if gauge == "stp" else "materialized"
    return gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge=gauge, form=form))


def train(gauge, steps, rank=0, world=1):
    with default_dtype(torch.float64):
        model = model_in(gauge)
        if world > 1:
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
        opt = gh.GaugeOptimizerFactory()(model, "adamw", lr=0.02, weight_decay=0.01)
        data = batch("llama", n=8, seed=3)
        part = {k: v.chunk(world)[rank] for k, v in data.items()}
        losses = []
        for _ in range(steps):
            labels = part["labels"]
            out = model(input_ids=part["input_ids"])
            loss = loss_func("llama")(out, labels, (labels != -100).sum())
            loss.backward()
            opt.step()
            opt.zero_grad()
            value = loss.detach().clone()
            if world > 1:
                torch.distributed.all_reduce(value)
                value /= world
            losses.append(value.item())
        names = [g["param_names"] for g in opt.param_groups]
        sharded = type(next(model.parameters())).__name__
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                 for k, v in model.state_dict().items()}
    return {"losses": losses, "groups": names, "param_type": sharded,
            "state_sum": float(sum(v.double().abs().sum() for v in state.values()))}


def main():
    steps, out = int(sys.argv[1]), sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    try:
        result = {g: train(g, steps, rank, world) for g in ("stp", "mup")}
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()  # the last collective ran in train()
    result["world_size"] = world
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
