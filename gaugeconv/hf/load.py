"""Load a saved folder into memory in its recorded gauge and form, running no code from it.

config.json is read as JSON and checked (``inspect.read_config``); the configuration class comes
from its ``model_type`` (transformers' CONFIG_MAPPING) and the model class from its
``architectures`` as the auto mappings list them (``inspect.model_class_for``), exactly as
``gaugeconv convert`` does: ``auto_map`` remote code is never imported. The weights are read by
that class's ``from_pretrained`` (safetensors, or ``pytorch_model.bin`` with weights_only), and
the gauge entry is applied like ``gaugeconv.hf.from_pretrained`` applies it. Nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GaugeError
from .config import CONFIG_KEY, GaugeConfig

__all__ = ["load_folder", "folder_gauge"]


def folder_gauge(path: str | Path, plain: GaugeConfig | None,
                 raw: dict[str, Any] | None = None) -> tuple[GaugeConfig, bool]:
    """The gauge a folder records (or ``plain`` for a folder without an entry) and whether
    it has an entry. ``raw``: its config.json, read here when not given."""
    from .inspect import gauge_config_from_entry, read_config

    raw = read_config(path) if raw is None else raw
    entry = raw.get(CONFIG_KEY)
    if entry is not None:
        return gauge_config_from_entry(entry, str(Path(path) / "config.json")), True
    if plain is None:
        raise GaugeError(f"{path} carries no gauge entry (a plain checkpoint, STP gauge): give "
                         "its richness (--richness)")
    return plain, False


def load_folder(path: str | Path, dtype: torch.dtype | str, plain: GaugeConfig | None = None
                ) -> nn.Module:
    """The model of ``path`` in ``dtype`` ("auto": as saved), in its recorded gauge and form.

    A folder without a gauge entry is STP gauge at ``plain``'s richness (in ``plain``'s form).
    """
    from .inspect import folder_config, model_class_for, read_config
    from .model import apply_gauge

    path = Path(path)
    raw = read_config(path)
    gauge, _ = folder_gauge(path, plain, raw)
    config = folder_config(path, raw)
    cls = model_class_for(config)
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype}
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise GaugeError(f"{path}: {cls.__name__}.from_pretrained cannot load it "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return apply_gauge(model, gauge)
