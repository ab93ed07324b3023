"""What from_pretrained accepts, convert accepts: real layouts, converted, loaded, compared.

Every case loads SRC with plain transformers and DST with gaugeconv (its gauge restored) and
asserts identical outputs: at width 64 and r = 1/2 every factor is a power of two, so the
converted model computes bit for bit what the original computes. DST in the default format
(effective tensors) also loads with plain transformers as the same function; with --stored it
does not (the negative control).
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import gaugeconv.hf as gh
from tests.adversarial.helpers import run, snapshot
from tests.hf.tiny import batch

FILE = "model.safetensors"


def _model(path, auto_name, gauged):
    import transformers

    auto = getattr(transformers, auto_name)
    return (gh.from_pretrained(auto, str(path)) if gauged else auto.from_pretrained(path)).eval()


def _outputs(model, auto_name):
    x = batch("bert" if "Masked" in auto_name or auto_name == "AutoModel" else "gpt2")
    x.pop("labels")
    with torch.no_grad():
        out = model(**x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _convert(capsys, src, dst, *extra):
    before = snapshot(src)
    code, out, err = run(capsys, "convert", src, dst, "--to", "mup", "-r", "0.5", "--json", *extra)
    assert code == 0, err
    assert snapshot(src) == before  # SRC untouched
    report = json.loads(out)
    assert report["weights"] == ("stored" if "--stored" in extra else "effective")
    return report


def _same_outputs(src, dst, auto_name="AutoModelForCausalLM", stored=False):
    ref = _outputs(_model(src, auto_name, gauged=False), auto_name)
    gauged = _model(dst, auto_name, gauged=True)
    assert gauged.config.gaugeconv["gauge"] == "mup"
    assert torch.equal(ref, _outputs(gauged, auto_name))
    plain = _model(dst, auto_name, gauged=False)
    if stored:
        # negative control: stored tensors read without their gauge compute something else
        assert not torch.allclose(ref, _outputs(plain, auto_name))
    else:
        # effective tensors: any loader reads SRC's function ...
        assert torch.equal(ref, _outputs(plain, auto_name))
        # ... and the control: the gauge really was restored: materialized, the stored tensors
        # w = W / m move and the function stays
        gh.materialize(gauged)
        moved = [n for n, p in gauged.named_parameters()
                 if not torch.equal(p, plain.get_parameter(n))]
        assert moved
        assert torch.equal(ref, _outputs(gauged, auto_name))


def _edit(src, change):
    t = load_file(src / FILE)
    change(t)
    save_file(t, src / FILE, metadata={"format": "pt"})


def test_old_bert_position_ids_are_copied_through(make_src, tmp_path, capsys):
    src = make_src("bert")
    ids = torch.arange(32).unsqueeze(0)
    _edit(src, lambda t: t.update({"bert.embeddings.position_ids": ids}))
    report = _convert(capsys, src, tmp_path / "out")
    assert report["ignored"] == ["bert.embeddings.position_ids"]
    assert torch.equal(load_file(tmp_path / "out" / FILE)["bert.embeddings.position_ids"], ids)
    _same_outputs(src, tmp_path / "out", "AutoModelForMaskedLM")


def test_sentence_embedding_bert_without_prefix(bases, tmp_path, capsys):
    """A BertModel checkpoint as sentence-transformers ship it: keys without 'bert.', old
    position_ids, a pooling folder beside it."""
    from transformers import BertModel

    src = tmp_path / "src"
    model = BertModel.from_pretrained(bases / "bert", add_pooling_layer=True)
    model.save_pretrained(src)
    _edit(src, lambda t: t.update({"embeddings.position_ids": torch.arange(32).unsqueeze(0)}))
    assert not any(k.startswith("bert.") for k in load_file(src / FILE))
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    # a headless encoder has no readout: refused unless confirmed (issue 9's sanity verdict)
    code, _, err = run(capsys, "convert", src, tmp_path / "out", "--to", "mup", "-r", "0.5")
    assert code == 2 and "no readout tensor" in err and not (tmp_path / "out").exists()
    report = _convert(capsys, src, tmp_path / "out", "--allow-unusual-roles")
    assert report["ignored"] == ["embeddings.position_ids"] and report["model"] == "BertModel"
    assert (tmp_path / "out" / "1_Pooling" / "config.json").read_text() == \
        '{"pooling_mode_mean_tokens": true}'
    _same_outputs(src, tmp_path / "out", "AutoModel")


def test_gpt2_legacy_attention_buffers(make_src, tmp_path, capsys):
    src = make_src("gpt2")
    mask = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    extra = {}
    for i in range(2):
        extra[f"transformer.h.{i}.attn.bias"] = mask.clone()
        extra[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    _edit(src, lambda t: t.update(extra))
    report = _convert(capsys, src, tmp_path / "out")
    assert report["ignored"] == sorted(extra)
    out = load_file(tmp_path / "out" / FILE)
    assert all(torch.equal(out[k], v) for k, v in extra.items())
    _same_outputs(src, tmp_path / "out")


def test_gpt2_weights_without_base_model_prefix(make_src, tmp_path, capsys):
    src = make_src("gpt2")
    _edit(src, lambda t: t.update({k.removeprefix("transformer."): t.pop(k) for k in list(t)}))
    assert "wte.weight" in load_file(src / FILE)
    report = _convert(capsys, src, tmp_path / "out")
    assert report["scaled"] == 0 and report["ignored"] == []
    _same_outputs(src, tmp_path / "out")
    report = _convert(capsys, src, tmp_path / "stored", "--stored")
    assert report["scaled"] == 9 and report["ignored"] == []
    _same_outputs(src, tmp_path / "stored", stored=True)


def test_tied_tensor_present_twice(make_src, tmp_path, capsys):
    src = make_src("gpt2")
    _edit(src, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].clone()}))
    for dst, extra, scaled in (("out", (), 0), ("stored", ("--stored",), 10)):
        report = _convert(capsys, src, tmp_path / dst, *extra)
        out = load_file(tmp_path / dst / FILE)
        assert report["scaled"] == scaled
        assert torch.equal(out["lm_head.weight"], out["transformer.wte.weight"])
        _same_outputs(src, tmp_path / dst, stored=bool(extra))


def test_tied_tensor_stored_under_its_other_name(make_src, tmp_path, capsys):
    src = make_src("gpt2")
    _edit(src, lambda t: t.update({"lm_head.weight": t.pop("transformer.wte.weight")}))
    _convert(capsys, src, tmp_path / "out")
    _same_outputs(src, tmp_path / "out")
    _convert(capsys, src, tmp_path / "stored", "--stored")
    _same_outputs(src, tmp_path / "stored", stored=True)


@pytest.mark.parametrize("sharded", [False, True, "legacy"])
def test_pytorch_model_bin_is_written_as_safetensors(bases, tmp_path, capsys, sharded):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(bases / "gpt2" / "config.json", src)
    state = load_file(bases / "gpt2" / FILE)
    if sharded == "legacy":  # the pre-zip pickle format of old checkpoints (no mmap)
        torch.save(state, src / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    elif sharded:
        keys = sorted(state)
        parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
        weight_map = {}
        for i, part in enumerate(parts):
            name = f"pytorch_model-0000{i + 1}-of-00002.bin"
            torch.save({k: state[k] for k in part}, src / name)
            weight_map.update({k: name for k in part})
        (src / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    else:
        torch.save(state, src / "pytorch_model.bin")
    report = _convert(capsys, src, tmp_path / "out", "--stored")
    assert report["source_format"] == "pytorch_model.bin" and report["lossless"]
    names = sorted(os.listdir(tmp_path / "out"))
    if sharded is True:
        assert names == ["config.json", "model-00001-of-00002.safetensors",
                         "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    else:
        assert names == ["config.json", FILE]
    # the same tensors as converting the safetensors original
    _convert(capsys, bases / "gpt2", tmp_path / "ref", "--stored")
    ref = load_file(tmp_path / "ref" / FILE)
    got = {}
    for n in names:
        if n.endswith(".safetensors"):
            got.update(load_file(tmp_path / "out" / n))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    _same_outputs(bases / "gpt2", tmp_path / "out", stored=True)
    # the default: the .bin's tensors as they are, in safetensors
    _convert(capsys, src, tmp_path / "eff")
    eff = {}
    for n in os.listdir(tmp_path / "eff"):
        if n.endswith(".safetensors"):
            eff.update(load_file(tmp_path / "eff" / n))
    assert eff.keys() == state.keys() and all(torch.equal(eff[k], state[k]) for k in state)
    _same_outputs(bases / "gpt2", tmp_path / "eff")


def test_hub_cache_layout_with_symlinks(bases, tmp_path, capsys):
    """models--x/snapshots/REV/* are relative links to ../../blobs/HASH, as huggingface_hub
    stores them; DST gets real files, the cache keeps its links."""
    repo = tmp_path / "models--tiny--gpt2"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(bases / "gpt2-sharded"))):
        shutil.copy(bases / "gpt2-sharded" / name, repo / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / name)
    _convert(capsys, snap, tmp_path / "out")
    assert all(os.path.islink(snap / n) for n in os.listdir(snap))
    assert not any(os.path.islink(tmp_path / "out" / n) for n in os.listdir(tmp_path / "out"))
    _same_outputs(bases / "gpt2", tmp_path / "out")


def test_weights_in_other_formats_are_left_out(make_src, tmp_path, capsys):
    src = make_src("gpt2")
    torch.save(load_file(src / FILE), src / "pytorch_model.bin")
    (src / "tf_model.h5").write_bytes(b"not converted")
    (src / "tokenizer.json").write_text("{}")
    report = _convert(capsys, src, tmp_path / "out")
    assert report["left_out"] == ["pytorch_model.bin", "tf_model.h5"]
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "generation_config.json", FILE,
                                                    "tokenizer.json"]


def test_bfloat16_llama_round_trip_is_bit_exact(bases, tmp_path, capsys):
    code, out, _ = run(capsys, "convert", bases / "llama-bf16-mup", tmp_path / "back", "--to",
                       "stp", "--json")
    assert code == 0 and json.loads(out)["lossless"]
    a, b = load_file(bases / "llama-bf16" / FILE), load_file(tmp_path / "back" / FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key", ["transformer.h.0.attn.extra", "transformer.h.0.mlp.extra",
                                 "bert.embeddings.position_ids"])
def test_a_truly_unknown_tensor_is_still_refused(make_src, tmp_path, capsys, key):
    """The control: keys that from_pretrained would not drop silently stay errors."""
    from tests.adversarial.helpers import assert_refused

    src = make_src("gpt2")
    _edit(src, lambda t: t.update({key: torch.zeros(3)}))
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", "--to", "mup", "-r",
                                      "0.5", "--json"], "unknown tensor")
