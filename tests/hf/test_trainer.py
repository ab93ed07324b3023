"""The real Trainer in two gauges of one richness: same losses, same as a hand-written loop."""

import json
import os
import sys

import pytest
import torch
from transformers import Trainer, get_linear_schedule_with_warmup

import gaugeconv.hf as gh
from gaugeconv.clip import clip_grad_norm_
from tests.hf.tiny import Stream, build, default_dtype, loss_func, losses, training_args
from tests.hf.torchrun import run_ranks, torchrun_command

# every test here runs the real Trainer (seconds each; two of them in fresh processes or torchrun)
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 10


def rel(a, b):
    return max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))


# STP in the default plain form, the others materialized: the equalities below compare the forms
FORM = {"stp": "plain", "mup": "materialized", "rescaling": "materialized"}


def gauged(arch, gauge, optimizer, dtype, width=48, form=None):
    model = build(arch, width=width, dtype=dtype)
    family = "sgd" if optimizer == "sgd" else "adam"
    return gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge=gauge, optimizer=family,
                                                form=form or FORM[gauge]))


def run_trainer(tmp_path, arch, gauge, optimizer, dtype, own_loss=True, **kw):
    with default_dtype(dtype):
        model = gauged(arch, gauge, optimizer, dtype)
        args = training_args(str(tmp_path / f"{arch}-{gauge}"), optimizer, STEPS, **kw)
        trainer = gh.GaugeTrainer(
            model=model, args=args, train_dataset=Stream(arch),
            optimizer_hyper={"momentum": 0.9} if optimizer == "sgd" else {},
            compute_loss_func=loss_func(arch) if own_loss else None,
        )
        trainer.train()
    return trainer


def hand_loop(arch, gauge, optimizer, dtype):
    """The same training with the core library only: groups, clipping, schedule, steps."""
    with default_dtype(dtype):
        model = gauged(arch, gauge, optimizer, dtype)
        g = gh.get_gauged(model)
        decay = lambda name, p: p.ndim < 2 or "norm" in name.lower()  # noqa: E731
        if optimizer == "sgd":
            opt = g.make_optimizer("sgd", 0.05, momentum=0.9, weight_decay=0.01, no_decay=decay)
        else:
            opt = g.make_optimizer("adamw", 0.05, betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=0.01, no_decay=decay)
        sched = get_linear_schedule_with_warmup(opt, 3, STEPS)
        loader = torch.utils.data.DataLoader(Stream(arch), batch_size=4)
        out = []
        model.train()
        for _, batch in zip(range(STEPS), loader):
            labels = batch.pop("labels")
            # normalised by the count of label tokens, as the Trainer passes num_items_in_batch
            loss = loss_func(arch)(model(**batch), labels, (labels != -100).sum())
            loss.backward()
            clip_grad_norm_(g, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            out.append(loss.item())
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_trainer_float64_two_gauges_and_hand_loop(tmp_path, arch, optimizer):
    ref = losses(run_trainer(tmp_path, arch, "stp", optimizer, torch.float64))
    assert len(ref) == STEPS and max(ref) - min(ref) > 1e-2  # it trained: losses moved
    for gauge in ("mup", "rescaling"):
        got = losses(run_trainer(tmp_path, arch, gauge, optimizer, torch.float64))
        assert rel(ref, got) <= 1e-10, (gauge, rel(ref, got))
    assert rel(ref, hand_loop(arch, "mup", optimizer, torch.float64)) <= 1e-10


@pytest.mark.parametrize("arch", ["gpt2", "llama-tied"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_trainer_float32_model_loss(tmp_path, arch, optimizer):
    ref = losses(run_trainer(tmp_path, arch, "stp", optimizer, torch.float32, own_loss=False))
    got = losses(run_trainer(tmp_path, arch, "mup", optimizer, torch.float32, own_loss=False))
    assert rel(ref, got) <= 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "llama-tied"])
def test_plain_and_materialized_forms_train_bit_for_bit(tmp_path, arch):
    """Width 64: every muP factor is a power of two, so the default plain form and muP's
    materialized form take the same steps bit for bit in float32, clipping included (the plain
    form clips with the Trainer's own clip, the materialized one by the effective norm computed
    the same way)."""
    runs = {}
    for form in ("plain", "materialized"):
        with default_dtype(torch.float32):
            model = build(arch, width=64, dtype=torch.float32)
            gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", form=form))
            args = training_args(str(tmp_path / form), "adamw", 6, max_grad_norm=0.5)
            trainer = gh.GaugeTrainer(model=model, args=args, train_dataset=Stream(arch))
            trainer.train()
        runs[form] = (losses(trainer), gh.get_gauged(model).effective_parameters())
    (la, wa), (lb, wb) = runs["plain"], runs["materialized"]
    assert la == lb and max(la) - min(la) > 1e-3
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert norms and max(norms) > 0.5  # the clipping was active


def test_groups_logging_and_the_stock_trainer(tmp_path):
    trainer = run_trainer(tmp_path, "gpt2", "mup", "adamw", torch.float64)
    groups = trainer.optimizer.param_groups
    g = gh.get_gauged(trainer.model)
    assert groups[0]["param_names"] == ["gaugeconv/base-lr"] and groups[0]["params"] == []
    # tensors with identical hyperparameters share a group; every tensor is named once
    names = [n for grp in groups[1:] for n in grp["param_names"]]
    assert sorted(names) == sorted(g.plans) and len(groups) - 1 < len(g.plans)
    for grp in groups[1:]:
        for name in grp["param_names"]:
            no_decay = "ln_" in name or name.endswith("bias")
            assert (grp["weight_decay"] == 0.0) == no_decay, name
    # the logged learning rate is the base rate times the schedule (warm-up 3, linear decay)
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    expected = [0.05 * min(k / 3, (STEPS - k) / (STEPS - 3)) for k in range(STEPS)]
    assert logged == pytest.approx(expected, rel=1e-12)

    # the stock Trainer through optimizer_cls_and_kwargs, clipping off (it clips the stored
    # gradients' norm, which is not gauge invariant): same losses in two gauges
    stp, resc = (run_stock(tmp_path, g, max_grad_norm=0) for g in ("stp", "rescaling"))
    assert len(stp.optimizer.param_groups) == len(groups)
    assert rel(losses(stp), losses(resc)) <= 1e-10


def run_stock(tmp_path, gauge, max_grad_norm, form=None):
    """The stock Trainer with gaugeconv's optimizer factory (GPT-2, AdamW, float64)."""
    with default_dtype(torch.float64):
        model = gauged("gpt2", gauge, "adamw", torch.float64, form=form)
        args = training_args(str(tmp_path / f"stock-{gauge}-{form}-{max_grad_norm}"), "adamw", STEPS,
                             max_grad_norm=max_grad_norm)
        stock = Trainer(model=model, args=args, train_dataset=Stream("gpt2"),
                        optimizer_cls_and_kwargs=gh.optimizer_cls_and_kwargs(args),
                        compute_loss_func=loss_func("gpt2"))
        stock.train()
    return stock


def test_stock_clipping_breaks_equivalence_and_gauge_clipping_keeps_it(tmp_path):
    """Negative control: the Trainer's own clipping by the stored norm tells a materialized
    gauge apart; in the plain form (a plain model) the stock clipping is the right one."""
    stp, resc = (run_stock(tmp_path, g, max_grad_norm=0.1) for g in ("stp", "rescaling"))
    assert rel(losses(stp), losses(resc)) > 1e-6
    a = losses(run_trainer(tmp_path, "gpt2", "stp", "adamw", torch.float64, max_grad_norm=0.1))
    b = losses(run_trainer(tmp_path, "gpt2", "rescaling", "adamw", torch.float64,
                           max_grad_norm=0.1))
    assert rel(a, b) <= 1e-10
    plain = run_stock(tmp_path, "rescaling", max_grad_norm=0.1, form="plain")
    assert rel(a, losses(plain)) <= 1e-10


def script(*args, torchrun=False):
    """train_script.py in a fresh process, or on two ranks (a free port, a hard deadline)."""
    path = os.path.join(ROOT, "tests", "hf", "train_script.py")
    run_ranks(torchrun_command(path, *args) if torchrun else [sys.executable, path, *map(str, args)])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resume_in_a_fresh_process(tmp_path, optimizer):
    script("llama", "mup", optimizer, 12, tmp_path / "full", tmp_path / "full.json")
    script("llama", "mup", optimizer, 12, tmp_path / "part", tmp_path / "part.json", "--save-at", 6)
    ckpt = tmp_path / "part" / "checkpoint-6"
    assert (ckpt / "optimizer.pt").exists()
    assert json.loads((ckpt / "config.json").read_text())["gaugeconv"]["gauge"] == "mup"
    script("llama", "mup", optimizer, 12, tmp_path / "part", tmp_path / "resumed.json",
           "--resume", ckpt)
    full = json.loads((tmp_path / "full.json").read_text())["losses"]
    resumed = json.loads((tmp_path / "resumed.json").read_text())["losses"]
    assert len(full) == 12 and len(resumed) == 12  # the first six come from trainer_state.json
    assert rel(full[6:], resumed[6:]) <= 1e-10


def test_two_process_ddp_matches_single_process(tmp_path):
    script("gpt2", "mup", "adamw", 8, tmp_path / "one", tmp_path / "one.json")
    script("gpt2", "mup", "adamw", 8, tmp_path / "two", tmp_path / "two.json", "--batch", 2,
           torchrun=True)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and two["groups"] == one["groups"]
    assert two["first_group"] == ["gaugeconv/base-lr"]
    assert rel(one["losses"], two["losses"]) <= 1e-10
