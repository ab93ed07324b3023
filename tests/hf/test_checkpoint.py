"""`gaugeconv convert` on folders: exactness, Trainer checkpoints, shards, refusals, kills."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import gaugeconv.hf as gh
from gaugeconv import GaugeError, RichnessError, UnknownGaugeError
from gaugeconv.checkpoint import CheckpointError, convert_checkpoint
from gaugeconv.cli import main
from tests.hf.test_trainer import ROOT, rel, script
from tests.hf.tiny import batch, build


def tensors(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def ulps(a, b):
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max().item()


def digest(folder):
    return {
        os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(
            open(os.path.join(d, f), "rb").read()).hexdigest()
        for d, _, files in os.walk(folder) for f in files
    }


def logits(auto, path, arch):
    model = gh.from_pretrained(auto, path).eval()
    x = batch(arch)
    x.pop("labels")
    return model(**x).logits


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("width", [48, 64])
def test_stp_mup_rescaling_stp_chain(tmp_path, arch, width):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    build(arch, width).save_pretrained(tmp_path / "stp")
    before = digest(tmp_path / "stp")
    convert_checkpoint(tmp_path / "stp", tmp_path / "mup", "mup", richness=0.5, progress=False)
    convert_checkpoint(tmp_path / "mup", tmp_path / "resc", "rescaling", progress=False)
    report = convert_checkpoint(tmp_path / "resc", tmp_path / "back", "stp", progress=False)
    assert digest(tmp_path / "stp") == before  # SRC untouched
    assert report.lossless == (width == 64)
    orig, back = tensors(tmp_path / "stp"), tensors(tmp_path / "back")
    assert orig.keys() == back.keys()
    for k in orig:
        if width == 64:
            assert torch.equal(orig[k], back[k]), k  # powers of two: bit for bit
        else:
            assert ulps(orig[k], back[k]) <= 1, k
    ref = logits(auto, tmp_path / "stp", arch)
    for name in ("mup", "resc", "back"):
        out = logits(auto, tmp_path / name, arch)
        if width == 64:
            assert torch.equal(out, ref), name
        else:
            assert ((out - ref).abs().max() / ref.abs().max()).item() < 2e-6, name
    cfg = json.loads((tmp_path / "resc" / "config.json").read_text())["gaugeconv"]
    assert cfg["gauge"] == "rescaling" and cfg["richness"] == 0.5


def test_sharded_gives_the_same_result_as_single(tmp_path):
    model = build("llama-tied", 48)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_size="40KB")
    assert len([f for f in os.listdir(tmp_path / "many") if f.endswith(".safetensors")]) > 3
    a = convert_checkpoint(tmp_path / "one", tmp_path / "one-mup", "mup", richness=0.25,
                           progress=False)
    b = convert_checkpoint(tmp_path / "many", tmp_path / "many-mup", "mup", richness=0.25,
                           progress=False)
    assert b.shards > 3 and a.scaled == b.scaled > 0
    ta, tb = tensors(tmp_path / "one-mup"), tensors(tmp_path / "many-mup")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    index = json.loads((tmp_path / "many-mup" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_trainer_checkpoint_converted_then_resumed(tmp_path, optimizer):
    script("llama", "stp", optimizer, 12, tmp_path / "full", tmp_path / "full.json")
    script("llama", "stp", optimizer, 12, tmp_path / "part", tmp_path / "part.json", "--save-at", 6)
    ckpt = tmp_path / "part" / "checkpoint-6"
    family = "sgd" if optimizer == "sgd" else "adam"
    report = convert_checkpoint(ckpt, tmp_path / "ckpt-resc", "rescaling", progress=False)
    assert report.optimizer and report.scheduler
    assert report.from_gauge["optimizer"] == family
    for f in ("trainer_state.json", "rng_state.pth", "training_args.bin"):
        assert (tmp_path / "ckpt-resc" / f).read_bytes() == (ckpt / f).read_bytes()
    script("llama", "rescaling", optimizer, 12, tmp_path / "resumed", tmp_path / "resumed.json",
           "--resume", tmp_path / "ckpt-resc")
    full = json.loads((tmp_path / "full.json").read_text())["losses"]
    resumed = json.loads((tmp_path / "resumed.json").read_text())["losses"]
    assert rel(full[6:], resumed[6:]) <= 1e-10
    # the optimizer state really was moved: resuming the unconverted state in the new gauge fails
    script("llama", "rescaling", optimizer, 12, tmp_path / "wrong", tmp_path / "wrong.json",
           "--resume", ckpt)
    wrong = json.loads((tmp_path / "wrong.json").read_text())["losses"]
    assert rel(full[6:], wrong[6:]) > 1e-3


def _corrupt_cases(tmp_path):
    base = tmp_path / "base"
    build("gpt2", 48).save_pretrained(base, max_shard_size="40KB")
    gauged = tmp_path / "gauged"
    convert_checkpoint(base, gauged, "mup", richness=0.5, progress=False)
    shards = sorted(f for f in os.listdir(base) if f.endswith(".safetensors"))

    def case(name, edit, src=base):
        folder = tmp_path / name
        shutil.copytree(src, folder)
        edit(folder)
        return folder

    def lie(folder):
        path = folder / shards[0]
        data = bytearray(path.read_bytes())
        text = data[8:200].decode("latin-1")
        old = text[text.index('"shape":[') : text.index("]", text.index('"shape":[')) + 1]
        new = old[:-2] + ("1" if old[-2] != "1" else "2") + "]"
        data[8:200] = text.replace(old, new, 1).encode("latin-1")
        path.write_bytes(bytes(data))

    def disagree(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["gaugeconv"]["multipliers"]["transformer.h.1.mlp.c_fc.weight"] *= 3
        (folder / "config.json").write_text(json.dumps(cfg))

    def moved(folder):
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        key = next(iter(index["weight_map"]))
        index["weight_map"][key] = next(s for s in shards if s != index["weight_map"][key])
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    def wider(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["n_embd"] = 64
        (folder / "config.json").write_text(json.dumps(cfg))

    return [
        (case("missing", lambda f: os.remove(f / shards[1])), {"richness": 0.5}, "missing shard"),
        (case("truncated", lambda f: os.truncate(f / shards[2], 1000)), {"richness": 0.5},
         "truncated"),
        (case("lying", lie), {"richness": 0.5}, "the header lies about"),
        (case("disagree", disagree, gauged), {}, "disagrees with the model at"),
        (case("moved", moved), {"richness": 0.5}, "index.json puts"),
        (case("wider", wider), {"richness": 0.5}, "config and weights disagree"),
        (base, {"richness": 0.7}, "richness r=0.7"),
        (gauged, {"richness": 0.25}, "r=0.5; r=0.25 was given"),
    ]


def test_bad_inputs_leave_src_untouched_and_no_dst(tmp_path):
    for src, kw, message in _corrupt_cases(tmp_path):
        before = digest(src)
        dst = tmp_path / f"out-{src.name}"
        with pytest.raises((GaugeError, RichnessError), match=message):
            convert_checkpoint(src, dst, "rescaling", progress=False, **kw)
        assert digest(src) == before, src.name
        assert not dst.exists(), src.name
        assert not list(tmp_path.glob(f".{dst.name}*")), src.name
    with pytest.raises(UnknownGaugeError, match="'ntk'"):
        convert_checkpoint(tmp_path / "base", tmp_path / "x", "ntk", richness=0.5)
    assert not (tmp_path / "x").exists()


def test_existing_dst_and_pickles(tmp_path, capsys):
    build("gpt2", 48).save_pretrained(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    code = main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "mup", "-r", "0.5"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert os.listdir(tmp_path / "dst") == ["keep.txt"]
    code = main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "mup", "-r",
                 "0.5", "--overwrite", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["scaled"] > 0 and "keep.txt" not in os.listdir(tmp_path / "dst")

    shutil.copytree(tmp_path / "src", tmp_path / "pickled")
    torch.save({"state": {}, "param_groups": [], "evil": object()}, tmp_path / "pickled" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_checkpoint(tmp_path / "pickled", tmp_path / "p-out", "mup", richness=0.5)
    assert not (tmp_path / "p-out").exists()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_conversion_killed_halfway_leaves_no_dst(tmp_path, how):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    big = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=6, n_head=12, vocab_size=512,
                                     n_positions=32, bos_token_id=0, eos_token_id=0))
    big.save_pretrained(tmp_path / "big", max_shard_size="40MB")
    dst = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gaugeconv", "convert", str(tmp_path / "big"), str(dst), "--to",
         "mup", "-r", "0.25", "--json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    tmp = []
    while time.time() < deadline and not tmp:  # wait until it is writing
        tmp = [p for p in tmp_path.glob(".out.gaugeconv-tmp-*") if any(p.glob("*.safetensors"))]
        time.sleep(0.005)
    assert tmp, "the conversion never started writing"
    proc.send_signal(how)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not dst.exists()
    if how == signal.SIGTERM:
        assert not list(tmp_path.glob(".out.gaugeconv-tmp-*"))  # cleaned up on the way out
    # the next conversion removes what a killed one left and succeeds
    convert_checkpoint(tmp_path / "big", dst, "mup", richness=0.25, progress=False)
    assert dst.is_dir() and not list(tmp_path.glob(".out.gaugeconv-tmp-*"))


def test_bfloat16_exact_refuses_and_snap_is_lossless(tmp_path, capsys):
    build("llama", 48, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    before = digest(tmp_path / "bf16")
    code = main(["convert", str(tmp_path / "bf16"), str(tmp_path / "x"), "--to", "mup", "-r", "0.5",
                 "--exact"])
    err = capsys.readouterr().err
    assert code == 2 and "not powers of two" in err and "self_attn" in err
    assert not (tmp_path / "x").exists() and digest(tmp_path / "bf16") == before
    report = convert_checkpoint(tmp_path / "bf16", tmp_path / "snap", "mup", richness=0.5,
                                snap_pow2=True, progress=False)
    assert report.lossless and report.snapped_to_powers_of_two and report.scaled > 0
    assert json.loads((tmp_path / "snap" / "config.json").read_text())["gaugeconv"]["gauge"] == \
        "custom"
    back = convert_checkpoint(tmp_path / "snap", tmp_path / "back", "stp", progress=False)
    assert back.lossless
    orig, again = tensors(tmp_path / "bf16"), tensors(tmp_path / "back")
    assert all(torch.equal(orig[k], again[k]) for k in orig)  # bit for bit in bfloat16


def test_roles_command(tmp_path, capsys):
    build("gpt2", 48).save_pretrained(tmp_path / "plain")
    assert main(["roles", str(tmp_path / "plain")]) == 2
    assert "give the richness" in capsys.readouterr().err
    assert main(["roles", str(tmp_path / "plain"), "-r", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {t["name"]: t for t in report["tensors"]}
    assert report["model"] == "GPT2LMHeadModel"
    assert rows["transformer.h.0.mlp.c_fc.weight"]["role"] == "hidden"
    assert rows["transformer.h.0.mlp.c_fc.weight"]["fan_in"] == 48
    assert rows["transformer.wte.weight"]["uses"] == ["transformer.wte.weight", "lm_head.weight"]
    assert main(["roles", str(tmp_path / "plain"), "-r", "0.5"]) == 0
    assert "transformer.wte.weight (+tied)" in capsys.readouterr().out
