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


def plain_logits(path, arch):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(path).eval()
    x = batch(arch)
    x.pop("labels")
    with torch.no_grad():
        return model(**x).logits


def entry(folder):
    return json.loads((folder / "config.json").read_text())["gaugeconv"]


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("width", [48, 64])
def test_stp_mup_rescaling_stp_chain(tmp_path, arch, width):
    """The scaling machinery: stored tensors (format 1) through three gauges and back."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    build(arch, width).save_pretrained(tmp_path / "stp")
    before = digest(tmp_path / "stp")
    kw = {"progress": False, "weights": "stored"}
    convert_checkpoint(tmp_path / "stp", tmp_path / "mup", "mup", richness=0.5, **kw)
    convert_checkpoint(tmp_path / "mup", tmp_path / "resc", "rescaling", **kw)
    report = convert_checkpoint(tmp_path / "resc", tmp_path / "back", "stp", **kw)
    assert entry(tmp_path / "resc")["format_version"] == 1
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


@pytest.mark.parametrize("width", [48, 64])
def test_default_writes_a_plain_checkpoint_of_the_same_function(tmp_path, width):
    """Plain SRC -> convert --to mup (default: effective tensors, format 2): (a) plain
    from_pretrained computes SRC's function bit for bit, (b) gh.from_pretrained restores muP
    with the same function, (c) the control: --stored is read by plain transformers as another
    function. At width 48 the muP factors are not powers of two."""
    from transformers import AutoModelForCausalLM

    build("gpt2", width).save_pretrained(tmp_path / "src")
    report = convert_checkpoint(tmp_path / "src", tmp_path / "mup", "mup", richness=0.5,
                                progress=False)
    assert report.weights == "effective" and report.scaled == 0 and report.lossless
    e = entry(tmp_path / "mup")
    assert e["format_version"] == 2 and e["gauge"] == "mup"
    assert (tmp_path / "mup" / "model.safetensors").read_bytes() == \
        (tmp_path / "src" / "model.safetensors").read_bytes()  # raw bytes, unchanged
    ref = plain_logits(tmp_path / "src", "gpt2")
    assert torch.equal(plain_logits(tmp_path / "mup", "gpt2"), ref)  # (a)
    model = gh.from_pretrained(AutoModelForCausalLM, str(tmp_path / "mup")).eval()  # (b)
    assert model.config.gaugeconv["gauge"] == "mup"
    multipliers = gh.get_gauged(model).parameterization.multipliers
    assert multipliers == e["multipliers"] and any(m != 1.0 for m in multipliers.values())
    x = batch("gpt2")
    x.pop("labels")
    with torch.no_grad():
        got = model(**x).logits
    # w = W / m: the forward's m * w is W bit for bit for powers of two; otherwise some plain
    # float32 W are no product fl(w * m) of any float32 w, and m * w misses them by one ulp
    tol = 0 if width == 64 else 2e-6
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= tol
    # (c) the negative control: stored tensors, read by plain transformers
    stored = convert_checkpoint(tmp_path / "src", tmp_path / "stored", "mup", richness=0.5,
                                progress=False, weights="stored")
    assert stored.weights == "stored" and stored.scaled > 0
    assert entry(tmp_path / "stored")["format_version"] == 1
    wrong = plain_logits(tmp_path / "stored", "gpt2")
    assert (wrong - ref).abs().max() > 1e-3 * ref.abs().max()
    restored = logits(AutoModelForCausalLM, tmp_path / "stored", "gpt2").detach()
    assert ((restored - ref).abs().max() / ref.abs().max()).item() <= tol


@pytest.mark.parametrize("width", [48, 64])
def test_format_1_src_becomes_effective_tensors(tmp_path, width):
    """A format-1 SRC (stored muP tensors) -> rescaling in the default format: each tensor is
    scaled by its muP multiplier into the effective tensor, a plain checkpoint of the function;
    for powers of two (width 64) bit for bit the original plain weights."""
    from transformers import AutoModelForCausalLM

    build("gpt2", width).save_pretrained(tmp_path / "src")
    convert_checkpoint(tmp_path / "src", tmp_path / "mup1", "mup", richness=0.5, progress=False,
                       weights="stored")
    report = convert_checkpoint(tmp_path / "mup1", tmp_path / "resc", "rescaling",
                                progress=False)
    assert report.source_weights == "stored" and report.weights == "effective"
    assert report.scaled > 0 and report.lossless == (width == 64)
    e = entry(tmp_path / "resc")
    assert e["format_version"] == 2 and e["gauge"] == "rescaling"
    orig, got = tensors(tmp_path / "src"), tensors(tmp_path / "resc")
    for k in orig:
        if width == 64:
            assert torch.equal(orig[k], got[k]), k
        else:
            assert ulps(orig[k], got[k]) <= 1, k
    ref = plain_logits(tmp_path / "src", "gpt2")
    tol = 0 if width == 64 else 2e-6
    for out in (plain_logits(tmp_path / "resc", "gpt2"),
                logits(AutoModelForCausalLM, tmp_path / "resc", "gpt2").detach()):
        assert ((out - ref).abs().max() / ref.abs().max()).item() <= tol
    # the control: the format-1 SRC itself, read by plain transformers, is another function
    wrong = plain_logits(tmp_path / "mup1", "gpt2")
    assert (wrong - ref).abs().max() > 1e-3 * ref.abs().max()


def test_format_2_src_to_stored_tensors(tmp_path):
    """A format-2 SRC (effective tensors) with --stored: each tensor divided by m_target; only
    gh.from_pretrained reads the function (bit for bit: width 64, powers of two)."""
    from transformers import AutoModelForCausalLM

    build("gpt2", 64).save_pretrained(tmp_path / "src")
    convert_checkpoint(tmp_path / "src", tmp_path / "mup", "mup", richness=0.5, progress=False)
    report = convert_checkpoint(tmp_path / "mup", tmp_path / "resc", "rescaling",
                                progress=False, weights="stored")
    assert report.source_weights == "effective" and report.weights == "stored"
    assert report.scaled > 0 and report.lossless and entry(tmp_path / "resc")["format_version"] == 1
    ref = plain_logits(tmp_path / "src", "gpt2")
    assert torch.equal(logits(AutoModelForCausalLM, tmp_path / "resc", "gpt2").detach(), ref)
    wrong = plain_logits(tmp_path / "resc", "gpt2")  # the control
    assert (wrong - ref).abs().max() > 1e-3 * ref.abs().max()


def test_default_chain_keeps_the_bytes(tmp_path):
    """STP -> muP -> rescaling -> STP in the default format: the weights never change."""
    build("llama-tied", 48).save_pretrained(tmp_path / "stp")
    convert_checkpoint(tmp_path / "stp", tmp_path / "mup", "mup", richness=0.25, progress=False)
    convert_checkpoint(tmp_path / "mup", tmp_path / "resc", "rescaling", progress=False)
    report = convert_checkpoint(tmp_path / "resc", tmp_path / "back", "stp", progress=False)
    assert report.scaled == 0 and report.source_weights == "effective"
    assert entry(tmp_path / "back")["format_version"] == 2
    for name in ("mup", "resc", "back"):
        assert (tmp_path / name / "model.safetensors").read_bytes() == \
            (tmp_path / "stp" / "model.safetensors").read_bytes(), name
    assert entry(tmp_path / "resc")["gauge"] == "rescaling"


def test_sharded_gives_the_same_result_as_single(tmp_path):
    model = build("llama-tied", 48)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_size="40KB")
    assert len([f for f in os.listdir(tmp_path / "many") if f.endswith(".safetensors")]) > 3
    a = convert_checkpoint(tmp_path / "one", tmp_path / "one-mup", "mup", richness=0.25,
                           progress=False, weights="stored")
    b = convert_checkpoint(tmp_path / "many", tmp_path / "many-mup", "mup", richness=0.25,
                           progress=False, weights="stored")
    assert b.shards > 3 and a.scaled == b.scaled > 0
    ta, tb = tensors(tmp_path / "one-mup"), tensors(tmp_path / "many-mup")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    index = json.loads((tmp_path / "many-mup" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_trainer_checkpoint_converted_then_resumed(tmp_path, optimizer):
    """A plain-form STP checkpoint converted to the materialized rescaling gauge resumes on the
    same trajectory; converted to the plain form of rescaling, it resumes as it is."""
    script("llama", "stp", optimizer, 12, tmp_path / "full", tmp_path / "full.json")
    script("llama", "stp", optimizer, 12, tmp_path / "part", tmp_path / "part.json", "--save-at", 6)
    ckpt = tmp_path / "part" / "checkpoint-6"
    family = "sgd" if optimizer == "sgd" else "adam"
    assert entry(ckpt)["form"] == "plain"
    report = convert_checkpoint(ckpt, tmp_path / "ckpt-resc", "rescaling", progress=False,
                                form="materialized")
    assert report.optimizer and report.scheduler
    assert report.from_gauge["optimizer"] == family
    assert (report.source_form, report.form) == ("plain", "materialized")
    # a GaugeTrainer checkpoint holds effective tensors: they are copied, the entry and the
    # optimizer state (the STP gauge's units -> the stored units of rescaling) move
    assert report.source_weights == report.weights == "effective" and report.scaled == 0
    assert entry(tmp_path / "ckpt-resc")["format_version"] == 2
    assert entry(tmp_path / "ckpt-resc")["form"] == "materialized"
    for f in ("trainer_state.json", "rng_state.pth", "training_args.bin"):
        assert (tmp_path / "ckpt-resc" / f).read_bytes() == (ckpt / f).read_bytes()
    script("llama", "rescaling", optimizer, 12, tmp_path / "resumed", tmp_path / "resumed.json",
           "--resume", tmp_path / "ckpt-resc", "--form", "materialized")
    full = json.loads((tmp_path / "full.json").read_text())["losses"]
    resumed = json.loads((tmp_path / "resumed.json").read_text())["losses"]
    assert rel(full[6:], resumed[6:]) <= 1e-10
    # the optimizer state really was moved: resuming the unconverted state in the new gauge fails
    script("llama", "rescaling", optimizer, 12, tmp_path / "wrong", tmp_path / "wrong.json",
           "--resume", ckpt, "--form", "materialized")
    wrong = json.loads((tmp_path / "wrong.json").read_text())["losses"]
    assert rel(full[6:], wrong[6:]) > 1e-3
    # the default: DST in the plain form, whose optimizer is the STP gauge's: the state is kept
    plain = convert_checkpoint(ckpt, tmp_path / "ckpt-plain", "rescaling", progress=False)
    assert (plain.form, plain.lossless) == ("plain", True)
    a = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "ckpt-plain" / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i]
               if isinstance(a[i][k], torch.Tensor))
    script("llama", "rescaling", optimizer, 12, tmp_path / "plain", tmp_path / "plain.json",
           "--resume", tmp_path / "ckpt-plain")
    assert rel(full[6:], json.loads((tmp_path / "plain.json").read_text())["losses"][6:]) <= 1e-10


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
    assert code == 0 and report["copied_raw"] == report["tensors"] > 0
    assert "keep.txt" not in os.listdir(tmp_path / "dst")

    shutil.copytree(tmp_path / "src", tmp_path / "pickled")
    torch.save({"state": {}, "param_groups": [], "evil": object()}, tmp_path / "pickled" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_checkpoint(tmp_path / "pickled", tmp_path / "p-out", "mup", richness=0.5)
    assert not (tmp_path / "p-out").exists()


@pytest.mark.slow
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
         "mup", "-r", "0.25", "--json", "--stored"],  # every tensor rescaled: slow enough
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
                 "--exact", "--stored"])
    err = capsys.readouterr().err
    assert code == 2 and "not powers of two" in err and "self_attn" in err
    assert not (tmp_path / "x").exists() and digest(tmp_path / "bf16") == before
    # the default copies the weights: nothing is scaled, so --exact has nothing to refuse
    assert main(["convert", str(tmp_path / "bf16"), str(tmp_path / "x"), "--to", "mup", "-r",
                 "0.5", "--exact", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scaled"] == 0
    report = convert_checkpoint(tmp_path / "bf16", tmp_path / "snap", "mup", richness=0.5,
                                snap_pow2=True, progress=False, weights="stored")
    assert report.lossless and report.snapped_to_powers_of_two and report.scaled > 0
    assert json.loads((tmp_path / "snap" / "config.json").read_text())["gaugeconv"]["gauge"] == \
        "custom"
    back = convert_checkpoint(tmp_path / "snap", tmp_path / "back", "stp", progress=False)
    assert back.lossless
    orig, again = tensors(tmp_path / "bf16"), tensors(tmp_path / "back")
    assert all(torch.equal(orig[k], again[k]) for k in orig)  # bit for bit in bfloat16


def test_cli_stored_warns_in_one_line(tmp_path, capsys):
    build("gpt2", 48).save_pretrained(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "eff"), "--to", "mup", "-r",
                 "0.5"]) == 0
    out, err = capsys.readouterr()
    assert "effective tensors (format 2)" in out and "warning" not in err
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "st"), "--to", "mup", "-r",
                 "0.5", "--stored", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["weights"] == "stored"
    assert err.count("\n") == 1 and "warning" in err and "different function" in err
    assert entry(tmp_path / "st")["format_version"] == 1
    assert entry(tmp_path / "eff")["format_version"] == 2
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--stored" in text and "read such a folder as a DIFFERENT function" in text


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
