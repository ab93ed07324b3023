"""Hidden folders of conversions: the sweep removes only what is provably dead.

A conversion holds an flock on ``.DST.gaugeconv-lock-PID-TOKEN`` for its whole life; the sweep
that starts every conversion removes a hidden folder only if it can take that lock. PIDs prove
nothing (a conversion in another PID namespace, a container sharing the folder, has a PID that
does not exist here), and signals that end a conversion (SIGINT, SIGTERM, SIGHUP) remove its
folder and lock on the way out.
"""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gaugeconv.checkpoint.placement import sweep
from tests.adversarial.helpers import run, snapshot
from tests.hf.torchrun import ROOT

FAKE_PID = 2 ** 22 + 4242  # above the largest pid_max: no process here has it

# A conversion in another PID namespace, as this namespace sees it: a hidden folder and a lock
# named with a PID that does not exist here, the lock held, half a shard written.
HOLDER = r"""
import sys
from pathlib import Path
from gaugeconv.checkpoint.placement import hold_lock

parent, name, token = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
fd = hold_lock(parent / f".{name}.gaugeconv-lock-{token}")
assert fd is not None and fd >= 0, fd
tmp = parent / f".{name}.gaugeconv-tmp-{token}"
tmp.mkdir()
(tmp / "model.safetensors").write_bytes(b"half a shard")
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if ".gaugeconv-" in n)


def _convert(capsys, src, dst, *extra):
    code, out, err = run(capsys, "convert", src, dst, "--to", "mup", "-r", "0.5", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def holder(tmp_path):
    token = f"{FAKE_PID}-0123abcd"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "dst", token],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "holding"
    yield proc, token
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_a_live_conversion_in_another_pid_namespace_is_not_swept(make_src, tmp_path, capsys,
                                                                   holder):
    proc, token = holder
    with pytest.raises(ProcessLookupError):
        os.kill(FAKE_PID, 0)  # the old PID test would have called it dead and swept it
    src = make_src()
    theirs = snapshot(tmp_path)
    theirs = {k: v for k, v in theirs.items() if ".gaugeconv-" in k}
    assert sorted(theirs) == [f".dst.gaugeconv-lock-{token}", f".dst.gaugeconv-tmp-{token}",
                              f".dst.gaugeconv-tmp-{token}/model.safetensors"]
    report = _convert(capsys, src, tmp_path / "dst")
    assert report["notes"] == []
    report = _convert(capsys, src, tmp_path / "dst", "--overwrite")  # and again, replacing DST
    assert report["notes"] == []
    now = snapshot(tmp_path)
    assert {k: v for k, v in now.items() if ".gaugeconv-" in k} == theirs  # untouched
    # its conversion dies (SIGKILL: no clean-up at all); the kernel drops its lock, and the
    # next conversion to DST removes the folder and the lock file
    proc.kill()
    proc.wait(timeout=30)
    report = _convert(capsys, src, tmp_path / "dst", "--overwrite")
    assert report["notes"] == [f"removed .dst.gaugeconv-tmp-{token}, left by a killed "
                               f"conversion ({token})"]
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_sweep_leaves_a_held_lock_and_takes_a_free_one(tmp_path, holder):
    """sweep() itself, called while the holder runs and after it ended normally (stdin closed:
    it exits without deleting anything, like a conversion killed by SIGKILL)."""
    proc, token = holder
    assert sweep(tmp_path / "dst") == []
    assert len(_hidden(tmp_path)) == 2
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert len(sweep(tmp_path / "dst")) == 1
    assert _hidden(tmp_path) == []


def test_debris_without_a_lock_file_is_kept_and_reported(make_src, tmp_path, capsys):
    """Nothing proves that its conversion ended (a gaugeconv without locks, a lock deleted by
    hand): it is kept, and the report says so, whatever its PID."""
    src = make_src()
    orphan = tmp_path / f".dst.gaugeconv-tmp-{FAKE_PID}-00000000"
    orphan.mkdir()
    (orphan / "half.safetensors").write_bytes(b"x" * 10)
    report = _convert(capsys, src, tmp_path / "dst")
    assert len(report["notes"]) == 1 and report["notes"][0].startswith(f"kept {orphan.name}")
    assert (orphan / "half.safetensors").read_bytes() == b"x" * 10


# -- signals mid-write -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A GPT-2 of about 100 MB in shards of 20 MB: converting it with --stored (every tensor
    scaled) takes long enough to be caught in the middle. Written with numpy, not initialised."""
    import torch
    from safetensors.numpy import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("big")
    cfg = GPT2Config(n_embd=512, n_layer=8, n_head=8, vocab_size=512, n_positions=32,
                     bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GPT2LMHeadModel(cfg).state_dict().items()
                  if k != "lm_head.weight"}
    cfg.save_pretrained(folder)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        current[name] = np.full(shape, 0.02, dtype=np.float32)
        size += current[name].nbytes
        if size > 20 << 20:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def _lock_is_held(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as err:
        assert err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        return True
    finally:
        os.close(fd)


@pytest.mark.slow  # a conversion in its own process (imports of torch and transformers)
@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGHUP", "SIGINT", "SIGTERM"])
def test_a_signal_mid_write_leaves_no_debris(big, tmp_path, how):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gaugeconv", "convert", str(big), str(out), "--to", "mup", "-r",
         "0.5", "--stored", "--json", "--workers", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline, writing = time.time() + 120, []
        while time.time() < deadline and not writing and proc.poll() is None:
            writing = [p for p in tmp_path.glob(".out.gaugeconv-tmp-*")
                       if any(p.glob("*.safetensors"))]
            time.sleep(0.002)
        assert writing, f"the conversion never started writing: {proc.communicate()}"
        locks = list(tmp_path.glob(".out.gaugeconv-lock-*"))
        assert len(locks) == 1 and _lock_is_held(locks[0])  # the writer holds its lock
        assert sweep(out) == [] and writing[0].is_dir()  # so a sweep leaves it alone
        proc.send_signal(how)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("gaugeconv convert: interrupted; DST was not written "
                                            "(SRC untouched)"), err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []  # no DST, no hidden folder, no lock file
