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


def folder_gauge(path: str | Path, plain: GaugeConfig | None) -> tuple[GaugeConfig, bool]:
    """The gauge a folder records (or ``plain`` for a folder without an entry) and whether
    it has an entry."""
    from .inspect import gauge_config_from_entry, read_config

    raw = read_config(path)
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
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .inspect import model_class_for, read_config
    from .model import apply_gauge

    path = Path(path)
    where = str(path / "config.json")
    gauge, _ = folder_gauge(path, plain)
    raw = read_config(path)
    model_type = raw["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise GaugeError(f"{where}: unknown model_type {model_type!r} (transformers has no "
                         "configuration class for it)")
    data = {k: v for k, v in raw.items() if k != "auto_map"}
    try:
        config = CONFIG_MAPPING[model_type].from_dict(data)
    except Exception as err:  # a configuration class refusing a field: one line
        raise GaugeError(f"{where}: transformers refuses it ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    cls = model_class_for(config)
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype}
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise GaugeError(f"{path}: {cls.__name__}.from_pretrained cannot load it "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return apply_gauge(model, gauge)
