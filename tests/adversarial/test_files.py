"""SRC entries that are not plain data, and Trainer files that do not fit together."""

import json
import os
import socket

import pytest
import torch

from tests.adversarial.helpers import assert_refused

ARGS = ["--to", "mup", "-r", "0.5", "--json"]


def _fifo(src):
    os.mkfifo(src / "tokenizer.json")


def _fifo_weights(src):
    (src / "model.safetensors").unlink()
    os.mkfifo(src / "model.safetensors")


def _fifo_deep(src):
    (src / "sub").mkdir()
    os.mkfifo(src / "sub" / "pipe")


def _socket(src):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    s.close()


def _dangling(src):
    os.symlink(src / "nowhere.json", src / "tokenizer.json")


def _dangling_weights(src):
    (src / "model.safetensors").unlink()
    os.symlink("missing-blob", src / "model.safetensors")


def _file_loop(src):
    os.symlink("b.json", src / "a.json")
    os.symlink("a.json", src / "b.json")


def _dir_loop(src):
    (src / "sub").mkdir()
    os.symlink("..", src / "sub" / "up")


def _self_loop(src):
    os.symlink(".", src / "here")


def _device(src):
    os.symlink("/dev/null", src / "null")


SPECIAL = {
    "fifo": (_fifo, "FIFO"), "fifo-weights": (_fifo_weights, "FIFO"),
    "fifo-in-subfolder": (_fifo_deep, "FIFO"), "socket": (_socket, "socket"),
    "dangling-link": (_dangling, "dangling symbolic link"),
    "dangling-weights": (_dangling_weights, "dangling symbolic link"),
    "file-link-loop": (_file_loop, "symbolic link loop"),
    "folder-link-loop": (_dir_loop, "symbolic link loop"),
    "self-link": (_self_loop, "symbolic link loop"),
    "device": (_device, "character device"),
}


@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_special_entries_in_src(make_src, tmp_path, capsys, case):
    edit, match = SPECIAL[case]
    src = make_src()
    edit(src)
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *ARGS], match)


def _groups(names):
    return [{"params": [i], "param_names": [n], "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
             "weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None,
             "capturable": False, "differentiable": False, "fused": None,
             "decoupled_weight_decay": True} for i, n in enumerate(names)]


def _opt_with(src, **change):
    """optimizer.pt whose first group has the given values (the other groups ordinary)."""
    groups = _groups(_names(src))
    groups[0].update(change)
    torch.save({"state": {}, "param_groups": groups}, src / "optimizer.pt")


def _sched(src, **lists):
    n = len(_names(src))
    torch.save({"base_lrs": [1e-3] * n, "_last_lr": [1e-3] * n, **lists}, src / "scheduler.pt")


def _names(src):
    from safetensors import safe_open

    with safe_open(src / "model.safetensors", "pt") as f:
        return sorted(f.keys())


def _opt(src, state=None):
    torch.save(state if state is not None else {"state": {}, "param_groups": _groups(_names(src))},
               src / "optimizer.pt")


TRAINER = {
    "optimizer-a-folder": (lambda s: (s / "optimizer.pt").mkdir(), "is a folder"),
    "scheduler-a-folder": (lambda s: (_opt(s), (s / "scheduler.pt").mkdir()), "is a folder"),
    "scheduler-without-optimizer": (lambda s: torch.save({"base_lrs": [1.0]}, s / "scheduler.pt"),
                                    "no optimizer.pt"),
    "base-lrs-length": (lambda s: (_opt(s), torch.save({"base_lrs": [1e-3], "_last_lr": [1e-3]},
                                                       s / "scheduler.pt")), "base_lrs has 1"),
    "base-lrs-not-list": (lambda s: (_opt(s), torch.save({"base_lrs": 0.1}, s / "scheduler.pt")),
                          "base_lrs"),
    "scheduler-a-list": (lambda s: (_opt(s), torch.save([1, 2], s / "scheduler.pt")),
                         "not a state dict"),
    "optimizer-garbage": (lambda s: (s / "optimizer.pt").write_bytes(b"\x80\x04garbage"),
                          "weights_only=True"),
    "optimizer-a-list": (lambda s: _opt(s, [1, 2]), "not an optimizer state_dict"),
    "optimizer-no-groups": (lambda s: _opt(s, {"state": {}, "param_groups": []}),
                            "no parameter groups"),
    "optimizer-group-not-dict": (lambda s: _opt(s, {"state": {}, "param_groups": [3]}),
                                 "not a parameter group"),
    "optimizer-names-not-strings": (lambda s: _opt(s, {"state": {}, "param_groups": [
        {"params": [0], "param_names": [7]}]}), "param_names"),
    "optimizer-unknown-tensor": (lambda s: _opt(s, {"state": {}, "param_groups": _groups(
        ["not.a.tensor"])}), "names tensors the model lacks"),
    "optimizer-pickle-object": (lambda s: torch.save({"state": {}, "x": object()},
                                                     s / "optimizer.pt"), "weights_only=True"),
    "optimizer-lr-a-string": (lambda s: _opt_with(s, lr="fast"),
                              "optimizer.pt group 0: lr is 'fast' (a str), not a finite number"),
    "optimizer-lr-a-numeric-string": (lambda s: _opt_with(s, lr="0.001"),
                                      "optimizer.pt group 0: lr is '0.001' (a str)"),
    "optimizer-initial-lr-a-list": (lambda s: _opt_with(s, initial_lr=[0.1]),
                                    "optimizer.pt group 0: initial_lr is [0.1] (a list)"),
    "optimizer-eps-nan": (lambda s: _opt_with(s, eps=float("nan")),
                          "optimizer.pt group 0: eps is nan (a float)"),
    "optimizer-weight-decay-bool": (lambda s: _opt_with(s, weight_decay=True),
                                    "optimizer.pt group 0: weight_decay is True (a bool)"),
    "optimizer-lr-tensor-of-two": (lambda s: _opt_with(s, lr=torch.ones(2)),
                                   "lr is a tensor of shape (2,)"),
    "scheduler-base-lr-a-string": (lambda s: (_opt(s), _sched(s, base_lrs=["1e-3"] * len(_names(s)))),
                                   "scheduler.pt base_lrs[0] is '1e-3' (a str)"),
}


@pytest.mark.parametrize("case", sorted(TRAINER))
def test_bad_trainer_files(make_src, tmp_path, capsys, case):
    edit, match = TRAINER[case]
    src = make_src()
    edit(src)
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *ARGS], match)


def test_numbers_of_every_accepted_kind_convert(make_src, tmp_path, capsys):
    """The control of the cases above: an int lr, a one-entry tensor lr (capturable and fused
    optimizers), an absent initial_lr and a scheduler with numbers convert, each lr moved."""
    import math

    from tests.adversarial.helpers import run

    src = make_src()
    groups = _groups(_names(src))
    groups[0].update(lr=torch.tensor(1e-3))
    groups[1].update(lr=1, initial_lr=None)
    torch.save({"state": {}, "param_groups": groups}, src / "optimizer.pt")
    _sched(src)
    code, out, err = run(capsys, "convert", src, tmp_path / "out", *ARGS, "--form", "materialized")
    assert code == 0, err
    moved = torch.load(tmp_path / "out" / "optimizer.pt", weights_only=True)["param_groups"]
    factors = [g["lr"] / h["lr"] for g, h in zip(moved[:2], groups[:2])]
    assert all(math.isfinite(float(f)) for f in factors) and float(factors[1]) != 1.0, factors


@pytest.mark.parametrize("base,to,value", [
    ("gpt2-mup", ["stp"], 60000.0),  # materialized muP (format 1) -> plain: s = 1/m
    ("gpt2", ["mup", "-r", "0.5", "--form", "materialized"], 1e-7)])
def test_optimizer_state_out_of_range_is_refused(make_src, tmp_path, capsys, base, to, value):
    """A float16 exp_avg_sq moved by s**-2 = 2**16 (muP -> STP for c_proj) overflows; moved by
    2**-16 (STP -> muP) a tiny one flushes to zero."""
    from tests.adversarial.helpers import run

    src = make_src(base)
    names = _names(src)
    i = names.index("transformer.h.0.mlp.c_proj.weight")
    shape = (256, 64)
    sq = torch.full(shape, value, dtype=torch.float16)
    state = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(shape, dtype=torch.float16),
                 "exp_avg_sq": sq}}
    _opt(src, {"state": state, "param_groups": _groups(names)})
    args = ["--to", *to, "--json"]
    err = assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *args],
                         "optimizer.pt entry")
    assert "exp_avg_sq" in err and "--allow-lossy" in err
    # the controls: ordinary values convert; --allow-lossy lets the extreme ones through
    code, out, _ = run(capsys, "convert", src, tmp_path / "lossy", *args, "--allow-lossy")
    report = json.loads(out)
    assert code == 0 and not report["lossless"] and "exp_avg_sq" in report["optimizer_lossy"][0]
    sq.fill_(0.5)
    _opt(src, {"state": state, "param_groups": _groups(names)})
    assert run(capsys, "convert", src, tmp_path / "ok", *args)[0] == 0


def test_optimizer_state_with_other_factors_is_not_lossless(make_src, tmp_path, capsys):
    """A plain SRC's weights are copied, but to the materialized form optimizer.pt moves by
    s = m_muP / 1, not a power of two at r = 1/4: not lossless, and --exact refuses, naming
    optimizer.pt. To the plain form (the default) nothing moves: lossless."""
    from tests.adversarial.helpers import run

    src = make_src()
    _opt(src)
    code, out, _ = run(capsys, "convert", src, tmp_path / "plain", "--to", "mup", "-r", "0.25",
                       "--json")
    report = json.loads(out)
    assert code == 0 and report["optimizer"] and report["lossless"] and report["form"] == "plain"
    (src / "optimizer.pt").unlink()
    args = ["--to", "mup", "-r", "0.25", "--json", "--form", "materialized"]
    code, out, _ = run(capsys, "convert", src, tmp_path / "no-opt", *args)
    report = json.loads(out)
    assert code == 0 and report["lossless"] and report["scaled"] == 0  # the control
    _opt(src)
    code, out, _ = run(capsys, "convert", src, tmp_path / "opt", *args)
    report = json.loads(out)
    assert code == 0 and report["optimizer"] and report["scaled"] == 0
    assert not report["lossless"]
    assert any(n.startswith("optimizer.pt state of") for n in report["not_power_of_two"])
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "exact", *args, "--exact"],
                   "optimizer.pt state of")
