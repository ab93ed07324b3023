"""Train a tiny model with GaugeTrainer; used by the tests in a fresh process or under torchrun.

python tests/hf/train_script.py ARCH GAUGE OPTIMIZER STEPS OUT_DIR RESULT.json
    [--save-at K] [--resume CKPT] [--batch B] [--dtype float32|float64]
    [--form plain|materialized]

Under torchrun the process group is made here, with a short timeout (a hung collective fails
the run instead of blocking it), and is destroyed without any collective once the result is
written: no rank waits for another at the end.
"""

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import gaugeconv.hf as gh  # noqa: E402
from tests.hf.tiny import (  # noqa: E402
    Stream,
    build,
    default_dtype,
    dump,
    loss_func,
    losses,
    training_args,
)

PG_TIMEOUT_S = 120  # any collective of this tiny run takes milliseconds


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("arch", "gauge", "optimizer"):
        p.add_argument(name)
    p.add_argument("steps", type=int)
    p.add_argument("out_dir")
    p.add_argument("result")
    p.add_argument("--save-at", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--form", default="plain")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the Trainer (accelerate) reuses it
        torch.distributed.init_process_group(
            "gloo", timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    try:
        train(a, dtype)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train(a: argparse.Namespace, dtype: torch.dtype) -> None:
    with default_dtype(dtype):
        model = build(a.arch, dtype=dtype)
        family = "sgd" if a.optimizer == "sgd" else "adam"
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge=a.gauge, optimizer=family,
                                             form=a.form))
        kw = {"per_device_train_batch_size": a.batch}
        if a.save_at:
            kw.update(save_strategy="steps", save_steps=a.save_at)
        args = training_args(a.out_dir, a.optimizer, a.steps, ddp_timeout=PG_TIMEOUT_S, **kw)
        hyper = {"momentum": 0.9} if a.optimizer == "sgd" else {}
        trainer = gh.GaugeTrainer(model=model, args=args, train_dataset=Stream(a.arch),
                                  optimizer_hyper=hyper, compute_loss_func=loss_func(a.arch))
        trainer.train(resume_from_checkpoint=a.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        names = [g["param_names"] for g in trainer.optimizer.param_groups]
        dump(a.result, losses=losses(trainer), groups=len(names), first_group=names[0],
             world_size=int(os.environ.get("WORLD_SIZE", "1")))


if __name__ == "__main__":
    main()
