"""A sweep's base, given once (issue 17, item 5; gaugeconv/hf/base.py).

GaugeConfig(base_width=n0) fixes the attention's base head dimension d0 for every width, as an
explicit attention_base_head_dim does; a model built from scratch with no base is warned about
(it is its own base: 1/sqrt(d) at its width), a loaded one never.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import gaugeconv.hf as gh
from gaugeconv.errors import GaugeError
from gaugeconv.hf.attention import attention_modules
from gaugeconv.hf.base import BaseWidthWarning
from gaugeconv.hf.inspect import meta_model

from . import zoo
from .tiny import VOCAB, build

WIDTHS = (64, 128, 256)  # 4 heads: head dimension 16, 32, 64; the base is width 64 (d0 = 16)


def _ids():
    return torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))


def _scalings(model):
    return [m.scaling for _, m in attention_modules(model)]


def _gauged(arch, width, **kw):
    model = build(arch, width=width, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", **kw))
    return model, [w for w in caught if issubclass(w.category, BaseWidthWarning)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_base_width_gives_the_scale_of_an_explicit_d0(arch):
    x = _ids()
    for width in WIDTHS:
        by_base, warned = _gauged(arch, width, base_width=64)
        by_d0, _ = _gauged(arch, width, attention_base_head_dim=16)
        assert not warned
        d = width // 4
        assert _scalings(by_base) == _scalings(by_d0) == pytest.approx(
            [16**-0.5 * 16 / d] * 2, rel=1e-15)  # muP's 1/d from the base, at every width
        assert torch.equal(by_base(input_ids=x).logits, by_d0(input_ids=x).logits)
        entry = gh.gauge_config_of(by_base)
        assert (entry.base_width, entry.attention_base_head_dim) == (64, 16)
        # negative control: no base, the model is its own base (1/sqrt(d)): another function
        # off the base width, and a warning
        own, warned = _gauged(arch, width)
        assert _scalings(own) == pytest.approx([d**-0.5] * 2, rel=1e-15)
        assert len(warned) == 1 and f"width {width}" in str(warned[0].message)
        if width != 64:
            assert (own(input_ids=x).logits - by_base(input_ids=x).logits).abs().max() > 1e-6


def test_the_base_may_be_a_config_or_a_model():
    base = build("llama", width=64)
    assert gh.GaugeConfig(richness=0.5, base_width=base.config).base_width == 64
    assert gh.GaugeConfig(richness=0.5, base_width=base).base_width == 64
    with pytest.raises(GaugeError, match="base_width"):
        gh.GaugeConfig(richness=0.5, base_width=0)
    model, warned = _gauged("llama", 256, base_width=base.config)
    assert not warned and gh.gauge_config_of(model).attention_base_head_dim == 16


def test_no_warning_where_the_base_is_known(tmp_path):
    def caught(fn):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            fn()
        return [w for w in got if issubclass(w.category, BaseWidthWarning)]

    cls = type(build("llama", width=128))
    # built from scratch: a base given (either way, or its own width) -> quiet; none -> warned
    assert not _gauged("llama", 128, attention_base_head_dim=16)[1]
    assert not _gauged("llama", 128, base_width=128)[1]
    assert len(_gauged("llama", 128)[1]) == 1
    # a plain checkpoint loaded from a folder is its own base (pretrained): quiet
    build("llama", width=128).save_pretrained(tmp_path / "plain")
    plain = cls.from_pretrained(str(tmp_path / "plain"))
    assert not caught(lambda: gh.apply_gauge(plain, gh.GaugeConfig(richness=0.5)))
    # ... also as `gaugeconv roles` / `convert` build it from the folder (meta device)
    assert not caught(lambda: meta_model(tmp_path / "plain", gh.GaugeConfig(richness=0.5)))
    # a gauged save carries its base: gh.from_pretrained, and a model built from its config
    # (the entry comes along), are quiet and keep base and d0
    model, _ = _gauged("llama", 128, base_width=64)
    model.save_pretrained(tmp_path / "gauged")
    got = caught(lambda: gh.from_pretrained(cls, str(tmp_path / "gauged")))
    assert not got
    loaded = gh.from_pretrained(cls, str(tmp_path / "gauged"))
    assert gh.gauge_config_of(loaded).base_width == 64 and _scalings(loaded) == _scalings(model)
    rebuilt = cls(loaded.config)
    assert not caught(lambda: gh.apply_gauge(rebuilt, gh.GaugeConfig(richness=0.5)))
    assert gh.gauge_config_of(rebuilt).base_width == 64
    # no attention, nothing base-relative: quiet
    assert not caught(lambda: gh.apply_gauge(zoo.build("mamba"), gh.GaugeConfig(richness=0.5)))


def test_a_base_is_kept_by_gauge_changes_and_checked():
    model, _ = _gauged("llama", 128, base_width=64)
    scales = _scalings(model)
    gh.convert_gauge(model, "stp")
    gh.convert_gauge(model, gh.GaugeConfig(richness=0.5, gauge="rescaling"))  # base from entry
    assert gh.gauge_config_of(model).base_width == 64 and _scalings(model) == scales
    with pytest.raises(GaugeError, match="base_width"):
        gh.convert_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup", base_width=32))
    with pytest.raises(GaugeError, match="disagrees with base_width=64"):
        _gauged("llama", 128, base_width=64, attention_base_head_dim=8)
    with pytest.raises(GaugeError, match="not an integer"):
        _gauged("llama", 128, base_width=50)  # head dimension 32 * 50/128 = 12.5
