"""Roles of a saved model, without loading its weights (the model is built on the meta device).

config.json is read as JSON here, never through ``AutoConfig.from_pretrained``: its
``model_type`` must name a configuration class of transformers (CONFIG_MAPPING) and each
``architectures`` entry a model class that transformers' auto mappings list for that
model_type. Nothing a folder names is imported or executed (no ``auto_map`` remote code, no
arbitrary transformers attribute such as ``pipeline``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import GaugeError
from ..jsonfile import read_json
from .config import CONFIG_KEY, GaugeConfig

__all__ = ["roles_of_folder", "model_class_for", "meta_model", "folder_config", "read_config",
           "model_classes"]


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a save_pretrained folder, as a JSON object (nothing executed)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise GaugeError(f"{path} has no config.json: not a save_pretrained folder")
    raw = read_json(file, str(file))
    if not isinstance(raw, dict):
        raise GaugeError(f"{file} holds a {type(raw).__name__}, not a JSON object")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise GaugeError(f"{file}: model_type is {model_type!r}, not a model type name")
    arch = raw.get("architectures")
    if arch is not None and (not isinstance(arch, list)
                             or not all(isinstance(a, str) for a in arch)):
        raise GaugeError(f"{file}: architectures is {arch!r}, not a list of class names")
    return raw


def model_classes(model_type: str) -> dict[str, str]:
    """Model class names transformers' auto mappings list for model_type -> mapping name."""
    from transformers.models.auto import modeling_auto

    out: dict[str, str] = {}
    for attr in dir(modeling_auto):
        table = getattr(modeling_auto, attr)
        if not (attr.startswith("MODEL") and attr.endswith("_MAPPING_NAMES")) or \
                not isinstance(table, dict):
            continue
        names = table.get(model_type)
        for name in (names,) if isinstance(names, str) else (names or ()):
            if isinstance(name, str):
                out.setdefault(name, attr)
    return out


def model_class_for(config: Any) -> type:
    """The transformers class named in config.architectures, if the auto mappings list it for
    config.model_type; the base model (AutoModel's class) when none is named."""
    import transformers

    allowed = model_classes(config.model_type)
    for name in getattr(config, "architectures", None) or []:
        if name not in allowed:
            raise GaugeError(
                f"config.json: architectures names {name!r}, which is not a transformers model "
                f"class for model_type {config.model_type!r} (known: {sorted(allowed)[:6]}...)"
            )
        return getattr(transformers, name)
    base = [n for n, table in allowed.items() if table == "MODEL_MAPPING_NAMES"]
    if not base:
        raise GaugeError(f"config.json: transformers has no model for model_type "
                         f"{config.model_type!r}")
    return getattr(transformers, base[0])


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "richness": (int, float, type(None)), "gauge": (str,), "gamma": (int, float),
    "optimizer": (str,), "width": (int, type(None)), "tied_role": (str,),
    "role_overrides": (dict,), "fan_in_overrides": (dict,), "multipliers": (dict, type(None)),
    "format_version": (int,), "form": (str,),
}


def gauge_config_from_entry(entry: Any, where: str) -> GaugeConfig:
    """The gauge entry of config.json, every field's type checked, as a GaugeConfig."""
    if not isinstance(entry, dict):
        raise GaugeError(f"{where}: the {CONFIG_KEY!r} entry is a {type(entry).__name__}, not an "
                         "object")
    for key, value in entry.items():
        types = _ENTRY_TYPES.get(key)
        if types is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise GaugeError(f"{where}: {CONFIG_KEY}.{key} is {value!r}, of the wrong type")
    for key in ("role_overrides", "fan_in_overrides", "multipliers"):
        for k, v in (entry.get(key) or {}).items():
            ok = isinstance(v, str) if key == "role_overrides" else (
                isinstance(v, (int, float)) and not isinstance(v, bool)
                and (key != "multipliers" or (math.isfinite(v) and v > 0)))
            if not ok:
                raise GaugeError(f"{where}: {CONFIG_KEY}.{key}[{k!r}] is {v!r}, of the wrong "
                                 "type or not a finite positive number")
    try:
        return GaugeConfig.from_dict(entry)
    except GaugeError as err:
        raise GaugeError(f"{where}: {CONFIG_KEY} entry: {err}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise GaugeError(f"{where}: {CONFIG_KEY} entry: {err}") from None


def folder_config(path: str | Path, raw: dict[str, Any] | None = None) -> Any:
    """The transformers configuration of a save_pretrained folder, built from config.json as
    data (``raw``, read here when not given): the class from ``model_type`` through
    transformers' CONFIG_MAPPING, ``auto_map`` ignored, the gauge entry carried as it is."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    raw = read_config(path) if raw is None else raw
    where = str(path / "config.json")
    model_type = raw["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise GaugeError(f"{where}: unknown model_type {model_type!r} (transformers has no "
                         "configuration class for it)")
    data = {k: v for k, v in raw.items() if k not in (CONFIG_KEY, "auto_map")}
    try:
        hf_config = CONFIG_MAPPING[model_type].from_dict(data)
    except Exception as err:  # a configuration class refusing a field: report, one line
        raise GaugeError(f"{where}: transformers refuses it ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    hf_config._name_or_path = str(path)  # loaded from a folder, as from_pretrained records it
    if raw.get(CONFIG_KEY) is not None:
        setattr(hf_config, CONFIG_KEY, raw[CONFIG_KEY])
    return hf_config


def meta_model(path: str | Path, config: GaugeConfig | None = None) -> Any:
    """The model of a save_pretrained folder, built on the meta device and put in its gauge.

    The gauge is the folder's config.json entry (checked against the model's roles), or, for a
    plain folder, STP gauge at ``config``'s richness. No weights are read.
    """
    import torch

    from .model import apply_gauge

    path = Path(path)
    raw = read_config(path)
    where = str(path / "config.json")
    recorded = raw.get(CONFIG_KEY)
    if recorded is not None:
        gauge_config = gauge_config_from_entry(recorded, where)
    elif config is not None:
        gauge_config = config
    else:
        raise GaugeError(f"{path} carries no gauge entry (a plain checkpoint): give the richness")
    hf_config = folder_config(path, raw)
    cls = model_class_for(hf_config)
    try:
        with torch.device("meta"):
            model = cls(hf_config)
    except Exception as err:  # a mistyped field that only the model's layers notice
        raise GaugeError(f"{where}: {cls.__name__} cannot be built from it "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
                         ) from None
    try:
        return apply_gauge(model, gauge_config)
    except GaugeError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, ZeroDivisionError) as err:
        raise GaugeError(f"{where}: the gauge cannot be applied ({type(err).__name__}: {err})") \
            from None


def roles_of_folder(path: str | Path, config: GaugeConfig | None = None) -> dict[str, Any]:
    """Inferred role, fan_in, multiplier and lr factor of every tensor of a saved model.

    Also: the count per role, the config fields that grow in the double-width twin, the
    verdicts that refuse a model unless confirmed (allow_unusual_roles), and flags for roles
    that are legal but unusual (roles.role_flags).
    """
    from .attention import describe_attention
    from .model import describe_roles
    from .roles import role_counts, role_flags, role_verdict, scaled_fields
    from .width_scaling import config_widths

    model = meta_model(path, config)
    gauge = GaugeConfig.from_dict(getattr(model.config, CONFIG_KEY))
    infos = model.__dict__["_gaugeconv_roles"]
    tensors = describe_roles(model)
    for row in tensors:
        row["rule"] = infos[row["name"]].rule
    return {
        "model": type(model).__name__,
        "gauge": gauge.to_dict(),
        "summary": role_counts(infos),
        "scaled_fields": [dataclasses.asdict(f) for f in scaled_fields(model, gauge)],
        "verdict": role_verdict(infos),
        "flags": role_flags(infos, config_widths(model.config, gauge.width)),
        "attention": describe_attention(model, gauge),
        "tensors": tensors,
    }
