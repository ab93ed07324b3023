"""Shared material of the adversarial suite: tiny real checkpoints, built once per session."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gaugeconv.checkpoint import convert_checkpoint
from tests.hf.tiny import build


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    """Read-only originals: plain GPT-2 (single and sharded), gauged GPT-2, BERT, float16 GPT-2.

    Width 64 at r = 1/2: every STP -> muP factor is a power of two, so converted models must
    compute bit for bit what the originals compute. The ``-mup`` folders hold the stored muP
    tensors (format 1, ``weights="stored"``): sources whose conversion scales every tensor.
    """
    root = tmp_path_factory.mktemp("bases")
    gpt2 = build("gpt2", 64)
    gpt2.save_pretrained(root / "gpt2")
    gpt2.save_pretrained(root / "gpt2-sharded", max_shard_size="100KB")
    build("bert", 64).save_pretrained(root / "bert")
    build("gpt2", 64, dtype=torch.float16).save_pretrained(root / "gpt2-f16")
    build("llama", 64, dtype=torch.bfloat16).save_pretrained(root / "llama-bf16")
    convert_checkpoint(root / "gpt2", root / "gpt2-mup", "mup", richness=0.5, progress=False,
                       weights="stored")
    convert_checkpoint(root / "gpt2-f16", root / "gpt2-f16-mup", "mup", richness=0.5,
                       progress=False, weights="stored")
    convert_checkpoint(root / "llama-bf16", root / "llama-bf16-mup", "mup", richness=0.5,
                       progress=False, weights="stored")
    return root


def factors_of(bases, name):
    """Per tensor, the STP -> muP factor at r = 1/2, read off a conversion (powers of two)."""
    a = load_file(bases / name / "model.safetensors")
    b = load_file(bases / f"{name}-mup" / "model.safetensors")
    out = {}
    for k in a:
        if a[k].is_floating_point() and a[k].abs().max() > 0:
            ratio = (b[k].double().abs().max() / a[k].double().abs().max()).item()
            out[k] = 2.0 ** round(torch.log2(torch.tensor(ratio)).item())
    return out


@pytest.fixture
def make_src(bases, tmp_path):
    def make(name="gpt2", to="src"):
        dst = tmp_path / to
        shutil.copytree(bases / name, dst, symlinks=True)
        return dst

    return make


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
