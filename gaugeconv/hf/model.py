"""Put any PreTrainedModel into a gauge, convert it, persist the gauge in its config.

* ``apply_gauge(model, GaugeConfig(...))`` reads the weights it finds as they are stored: a
  model without a gauge entry is in STP gauge (stored = effective), so a pretrained checkpoint
  keeps computing the same function; a model whose config carries a gauge entry (loaded from a
  gauged save) gets that gauge's multipliers back first. It then moves the model exactly into
  the requested gauge. It never re-initialises weights; ``initialize`` does that, explicitly.
* ``convert_gauge(model, to, optimizer=, schedulers=)`` changes the gauge of a gauged model.
* ``from_pretrained(AutoModelForCausalLM, path)`` loads with transformers and restores the gauge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import GaugeError
from ..gauges import Custom, Gauge, resolve_point
from ..model import GaugedModel
from ..plan import Parameterization
from ..richness import Family, Richness
from .attention import apply_attention_scale, with_attention_base
from .base import resolve_base
from .config import CONFIG_KEY, GaugeConfig
from .peft import drop_gauge, has_adapters, is_stale, lora_config, peft_inner
from .roles import TensorRoleInfo, infer_specs, width_of

__all__ = [
    "apply_gauge", "convert_gauge", "from_pretrained", "get_gauged", "initialize",
    "gauge_config_of", "describe_roles", "gauge_entry", "gauge_of",
]

_HANDLE = "_gaugeconv"
STORED_WEIGHTS, EFFECTIVE_WEIGHTS = 1, 2  # format_version of a config.json gauge entry


def get_gauged(model: nn.Module) -> GaugedModel:
    """The GaugedModel handle that apply_gauge attached to a model (or to a PeftModel's)."""
    model = peft_inner(model)
    if is_stale(model):
        raise GaugeError(
            f"the tensors of {type(model).__name__} changed since apply_gauge (adapters added or "
            "merged): call gh.apply_gauge(model, config) again (GaugeTrainer and the optimizer "
            "factory do it for peft models)"
        )
    handle = model.__dict__.get(_HANDLE)
    if handle is None:
        raise GaugeError(
            f"{type(model).__name__} carries no gauge: call gaugeconv.hf.apply_gauge(model, ...)"
        )
    return handle


def gauge_config_of(model: nn.Module) -> GaugeConfig | None:
    """The GaugeConfig recorded in model.config (None for a plain model)."""
    entry = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return GaugeConfig.from_dict(entry) if entry else None


def _gauge(config: GaugeConfig) -> Gauge:
    if config.gauge == "custom":
        return Custom(dict(config.multipliers or {}))
    return resolve_point(config.gauge, config.richness)[0]


def _width(model: nn.Module, config: GaugeConfig) -> int:
    """n is the config's hidden size; width= is only for configs that have none."""
    try:
        hidden = width_of(model.config)
    except GaugeError:
        if config.width is None:
            raise
        return config.width
    if config.width is not None and config.width != hidden:
        raise GaugeError(
            f"the gauge entry says width {config.width}, the model's hidden size is {hidden}"
        )
    return hidden


def _parameterization(
    model: nn.Module, config: GaugeConfig, infos: Mapping[str, TensorRoleInfo], gauge: Gauge
) -> Parameterization:
    width = _width(model, config)
    return Parameterization(
        [info.spec for info in infos.values()], Richness(config.richness, config.gamma),
        gauge, Family.parse(config.optimizer), width, config.wd_scaling,
    )


def gauge_entry(
    config: GaugeConfig, param: Parameterization, effective_weights: bool = False
) -> dict[str, Any]:
    """The config.json entry of a model in ``param``: the config with width and multipliers.

    ``format_version`` says what the weights beside it are: 1, the stored tensors of the
    recorded gauge (what ``gaugeconv convert`` writes); 2, effective tensors (what a gauged
    model's ``state_dict`` and ``save_pretrained`` write: a plain checkpoint of the same
    function, the entry only says which gauge to put it back in).
    """
    entry = config.replace(width=param.width, multipliers=param.multipliers).to_dict()
    entry["format_version"] = EFFECTIVE_WEIGHTS if effective_weights else STORED_WEIGHTS
    return entry


def weights_are_effective(entry: Mapping[str, Any] | None) -> bool:
    """Whether the weights beside a config.json gauge entry are effective tensors (format 2)."""
    return not entry or int(entry.get("format_version", STORED_WEIGHTS)) >= EFFECTIVE_WEIGHTS


def gauge_of(config: GaugeConfig) -> Gauge:
    """The Gauge a GaugeConfig names (custom: its recorded multipliers)."""
    return _gauge(config)


def _record(model: nn.Module, config: GaugeConfig, param: Parameterization) -> None:
    setattr(model.config, CONFIG_KEY, gauge_entry(config, param, effective_weights=True))


def _check_recorded(recorded: GaugeConfig, param: Parameterization) -> None:
    """A config.json entry must agree with the model it is applied to."""
    mine = param.multipliers
    theirs = recorded.multipliers or {}
    if set(theirs) != set(mine):
        diff = sorted(set(theirs) ^ set(mine))
        raise GaugeError(
            f"the gauge entry in config.json names other tensors than the model has: {diff[:5]}"
        )
    for name, m in mine.items():
        if not math.isclose(m, theirs[name], rel_tol=1e-9):
            raise GaugeError(
                f"the gauge entry in config.json disagrees with the model at {name!r}: recorded "
                f"multiplier {theirs[name]!r}, the model's roles and width give {m!r}"
            )


def _same_axis(have: GaugeConfig, want: GaugeConfig) -> None:
    """A gauge change keeps everything but the gauge: richness, gamma, family and roles."""
    for key in ("richness", "gamma", "optimizer", "tied_role", "role_overrides",
                "fan_in_overrides", "module_axes", "width_fields", "allow_unusual_roles",
                "wd_scaling", "base_width", "attention_base_head_dim"):
        if getattr(have, key) != getattr(want, key):
            raise GaugeError(
                f"the model is at {key}={getattr(have, key)!r} but {key}={getattr(want, key)!r} "
                "was asked for: a gauge change keeps richness, gamma, optimizer family and "
                "roles fixed"
            )


def apply_gauge(
    model: nn.Module,
    config: GaugeConfig,
    module_axes: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Put a PreTrainedModel into ``config``'s (richness, gauge), keeping its function exactly.

    ``module_axes`` adds module rules to ``config.module_axes`` (recorded in config.json).
    Returns the same model object (its class, forward and state-dict keys are unchanged). A
    PeftModel is gauged through its inner model; LoRA base layers get role "fixed" (hf/peft.py).
    """
    if module_axes:
        config = config.replace(module_axes={**config.module_axes, **dict(module_axes)})
    outer, model = model, peft_inner(model)
    lora = has_adapters(model)
    if lora:
        config = lora_config(config)
    if _HANDLE in model.__dict__:
        if not is_stale(model):
            raise GaugeError("this model already carries a gauge: use convert_gauge(model, to=...)")
        drop_gauge(model)  # adapters were added since: fold (same function) and start again
    recorded = gauge_config_of(model)
    if recorded is not None and lora:
        recorded = lora_config(recorded)
    recorded = with_attention_base(model, recorded) if recorded else None
    config = resolve_base(model, config, recorded)  # base width, attention d0; may warn
    if recorded is not None:
        _same_axis(recorded, config)
    # weights as found: effective (a plain model, or loaded from a format-2 save) or the stored
    # tensors of the recorded gauge (format 1, written by `gaugeconv convert`)
    effective = weights_are_effective(getattr(model.config, CONFIG_KEY, None))
    stp = (recorded or config).replace(gauge="stp", multipliers=None)
    source = stp if effective else recorded
    infos = infer_specs(model, source)
    start = _parameterization(model, source, infos, _gauge(source))
    if recorded is not None:
        _check_recorded(recorded, _parameterization(model, recorded, infos, _gauge(recorded)))
    apply_attention_scale(model, config)  # the richness's logit scale; no gauge changes it
    gauged = GaugedModel(model, start)
    target = _parameterization(model, config, infos, _gauge(config))
    if effective:
        gauged.set_from_effective(target)  # forward bit-identical to the plain model
    else:
        gauged.convert(target)
    model.__dict__[_HANDLE] = gauged
    model.__dict__["_gaugeconv_roles"] = infos
    _record(model, config, target)
    return outer


def convert_gauge(
    model: nn.Module,
    to: str | Gauge | GaugeConfig,
    optimizer: torch.optim.Optimizer | None = None,
    schedulers: Any = (),
) -> dict[str, float]:
    """Move a gauged model (and optimizer, schedulers) to another gauge; returns s per tensor."""
    gauged = get_gauged(model)
    model = peft_inner(model)
    current = gauge_config_of(model)
    if isinstance(to, GaugeConfig):
        new_config = to
    elif isinstance(to, Custom):
        multipliers = gauged.parameterization.with_gauge(to).multipliers
        new_config = current.replace(gauge="custom", multipliers=multipliers)
    else:
        name = to.name if isinstance(to, Gauge) else str(to).lower()
        new_config = current.replace(gauge=name, multipliers=None)
    new_config = resolve_base(model, new_config, current)
    _same_axis(current, new_config)
    target = gauged.parameterization.with_gauge(_gauge(new_config))
    scales = gauged.convert(target, optimizer=optimizer, schedulers=schedulers)
    _record(model, new_config, target)
    return scales


def initialize(model: nn.Module, seed: int | torch.Generator = 0) -> nn.Module:
    """Re-draw the matrices of a gauged model per the init table (v, stored std sqrt(v)/m).

    Vectors (biases, norm gains) keep their values. Explicit on purpose: apply_gauge never
    re-initialises a model.
    """
    get_gauged(model).initialize(seed)
    return model


def from_pretrained(cls: Any, path: str, *args: Any, **kwargs: Any) -> nn.Module:
    """``cls.from_pretrained(path)``, with the gauge recorded in its config.json restored.

    A folder without a gauge entry loads as a plain model (STP gauge: nothing to restore).
    """
    model = cls.from_pretrained(path, *args, **kwargs)
    recorded = gauge_config_of(model)
    if recorded is None:
        return model
    return apply_gauge(model, recorded)


def describe_roles(model: nn.Module) -> list[dict[str, Any]]:
    """Per tensor: role, fan_in, uses, multiplier, lr factor, init std (for `gaugeconv roles`)."""
    gauged = get_gauged(model)
    infos: Mapping[str, TensorRoleInfo] = peft_inner(model).__dict__["_gaugeconv_roles"]
    rows = []
    for name, plan in gauged.plans.items():
        info = infos[name]
        rows.append({
            "name": name, "shape": list(plan.spec.shape), "module": info.module_type,
            "role": plan.spec.role.value, "fan_in": plan.spec.fan_in, "source": info.source,
            "uses": list(info.uses), "multiplier": plan.multiplier, "lr_factor": plan.lr_factor,
            "init_std": plan.init_std if plan.spec.init == "normal" else None,
        })
    return rows
