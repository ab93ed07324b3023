"""Roles of a saved model, without loading its weights (the model is built on the meta device)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import GaugeError
from .attention import describe_attention
from .config import CONFIG_KEY, GaugeConfig
from .model import apply_gauge, describe_roles

__all__ = ["roles_of_folder", "model_class_for", "meta_model"]


def model_class_for(config: Any) -> type:
    """The transformers class named in config.architectures (AutoModel as a fallback)."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel._model_mapping[type(config)]


def meta_model(path: str | Path, config: GaugeConfig | None = None) -> Any:
    """The model of a save_pretrained folder, built on the meta device and put in its gauge.

    The gauge is the folder's config.json entry (checked against the model's roles), or, for a
    plain folder, STP gauge at ``config``'s richness. No weights are read.
    """
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise GaugeError(f"{path} has no config.json: not a save_pretrained folder")
    hf_config = AutoConfig.from_pretrained(path)
    recorded = getattr(hf_config, CONFIG_KEY, None)
    if recorded:
        gauge_config = GaugeConfig.from_dict(recorded)
    elif config is not None:
        gauge_config = config
    else:
        raise GaugeError(f"{path} carries no gauge entry (a plain checkpoint): give the richness")
    cls = model_class_for(hf_config)
    if recorded:
        delattr(hf_config, CONFIG_KEY)  # roles are re-derived, then checked against the entry
    with torch.device("meta"):
        model = cls(hf_config)
    if recorded:
        setattr(model.config, CONFIG_KEY, recorded)
    return apply_gauge(model, gauge_config)


def roles_of_folder(path: str | Path, config: GaugeConfig | None = None) -> dict[str, Any]:
    """Inferred role, fan_in, multiplier and lr factor of every tensor of a saved model."""
    model = meta_model(path, config)
    gauge = GaugeConfig.from_dict(getattr(model.config, CONFIG_KEY))
    return {
        "model": type(model).__name__,
        "gauge": gauge.to_dict(),
        "tensors": describe_roles(model),
        "attention": describe_attention(model, gauge),
    }
