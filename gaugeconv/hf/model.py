"""Put any PreTrainedModel into a gauge, convert it, persist the gauge in its config.

* ``apply_gauge(model, GaugeConfig(...))`` reads the weights it finds as they are stored: a
  model without a gauge entry is in STP gauge (stored = effective), so a pretrained checkpoint
  keeps computing the same function; a model whose config carries a gauge entry (loaded from a
  gauged save) gets that gauge back first. It then moves the model exactly into the requested
  gauge and form (``GaugeConfig.form``: "plain" by default, where the model stays a plain model
  and the gauge lives in the optimizer groups; "materialized" on request). It never
  re-initialises weights; ``initialize`` does that, explicitly.
* ``convert_gauge(model, to, optimizer=, schedulers=, form=)`` changes the gauge or the form of
  a gauged model; ``materialize`` and ``to_plain`` change the form only; ``form_of`` tells it.
* ``from_pretrained(AutoModelForCausalLM, path)`` loads with transformers and restores the gauge
  (in the form recorded in config.json).
* A model that changes after ``apply_gauge`` (a module replaced, embeddings resized, a layer
  appended, LoRA adapters added) gets its roles again from its config when the optimizer is
  built (``GaugedModel.sync`` with ``HFReplanner``), and its config.json entry with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import GaugeError
from ..forms import MATERIALIZED, PLAIN
from ..gauges import Custom, Gauge, resolve_point
from ..model import GaugedModel
from ..plan import Parameterization
from ..richness import Family, Richness
from .attention import apply_attention_scale, with_attention_base
from .base import resolve_base
from .config import CONFIG_KEY, GaugeConfig
from .peft import drop_gauge, has_adapters, lora_config, peft_inner
from .roles import TensorRoleInfo, infer_specs, width_of

__all__ = [
    "apply_gauge", "convert_gauge", "from_pretrained", "get_gauged", "initialize",
    "gauge_config_of", "describe_roles", "gauge_entry", "gauge_of", "materialize", "to_plain",
    "form_of", "HFReplanner",
]

_HANDLE = "_gaugeconv"
STORED_WEIGHTS, EFFECTIVE_WEIGHTS = 1, 2  # format_version of a config.json gauge entry


def get_gauged(model: nn.Module) -> GaugedModel:
    """The GaugedModel handle that apply_gauge attached to a model (or to a PeftModel's)."""
    model = peft_inner(model)
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


class HFReplanner:
    """Roles of a transformers model again, after its tensors changed (``GaugedModel.sync``).

    The roles come from the model's config as at ``apply_gauge`` (the double-width twin,
    hf/roles.py), with LoRA's base layers fixed when adapters are present; the config.json entry
    is recorded anew. A layer appended without updating the config (``num_hidden_layers``) has no
    counterpart in the twin and is an error naming it.
    """

    def __init__(self, config: GaugeConfig) -> None:
        self.config = config

    def __call__(self, module: nn.Module, old: Parameterization) -> Parameterization:
        config = lora_config(self.config) if has_adapters(module) else self.config
        infos = infer_specs(module, config)
        param = _parameterization(module, config, infos, _gauge(config))
        module.__dict__["_gaugeconv_roles"] = infos
        _record(module, config, param)
        return param


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
    """Put a PreTrainedModel into ``config``'s (richness, gauge, form), keeping its function.

    ``module_axes`` adds module rules to ``config.module_axes`` (recorded in config.json).
    Returns the same model object (its forward and state-dict keys are unchanged; in the plain
    form, the default, nothing of it changes but ``model.config.gaugeconv``). A PeftModel is
    gauged through its inner model; LoRA base layers get role "fixed" (hf/peft.py).
    """
    if module_axes:
        config = config.replace(module_axes={**config.module_axes, **dict(module_axes)})
    outer, model = model, peft_inner(model)
    lora = has_adapters(model)
    if lora:
        config = lora_config(config)
    if _HANDLE in model.__dict__:
        if not model.__dict__[_HANDLE].pending_changes():
            raise GaugeError("this model already carries a gauge: use convert_gauge(model, to=...)")
        drop_gauge(model)  # it changed since (adapters added): fold (same function), start again
    recorded = gauge_config_of(model)
    if recorded is not None and lora:
        recorded = lora_config(recorded)
    recorded = with_attention_base(model, recorded) if recorded else None
    config = resolve_base(model, config, recorded)  # base width, attention d0; may warn
    if recorded is not None:
        _same_axis(recorded, config)
    # weights as found: effective (a plain model, or loaded from a format-2 save) or the stored
    # tensors of the recorded gauge (format 1, written by `gaugeconv convert --stored`)
    effective = weights_are_effective(getattr(model.config, CONFIG_KEY, None))
    stp = (recorded or config).replace(gauge="stp", multipliers=None)
    source = stp if effective else recorded
    infos = infer_specs(model, source)
    start = _parameterization(model, source, infos, _gauge(source))
    if recorded is not None:
        _check_recorded(recorded, _parameterization(model, recorded, infos, _gauge(recorded)))
    apply_attention_scale(model, config)  # the richness's logit scale; no gauge changes it
    gauged = GaugedModel(model, start, form=PLAIN if effective else MATERIALIZED,
                         replanner=HFReplanner(config))
    target = _parameterization(model, config, infos, _gauge(config))
    if effective:
        gauged.set_from_effective(target, form=config.form)  # forward bit-identical to plain
    else:
        gauged.convert(target, form=config.form)
    model.__dict__[_HANDLE] = gauged
    model.__dict__["_gaugeconv_roles"] = infos
    _record(model, config, target)
    return outer


def convert_gauge(
    model: nn.Module,
    to: str | Gauge | GaugeConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    schedulers: Any = (),
    form: str | None = None,
) -> dict[str, float]:
    """Move a gauged model (and optimizer, schedulers) to another gauge and/or form.

    ``to`` None keeps the gauge, ``form`` None the form. Returns the factor s by which each
    stored tensor's multiplier moved (all 1 for a gauge change in plain form, where only the
    label and the config.json entry move).
    """
    gauged = get_gauged(model)
    model = peft_inner(model)
    if optimizer is None:
        gauged.sync()
    current = gauge_config_of(model)
    if to is None:
        new_config = current
    elif isinstance(to, GaugeConfig):
        new_config = to
    elif isinstance(to, Custom):
        multipliers = gauged.parameterization.with_gauge(to).multipliers
        new_config = current.replace(gauge="custom", multipliers=multipliers)
    else:
        name = to.name if isinstance(to, Gauge) else str(to).lower()
        new_config = current.replace(gauge=name, multipliers=None)
    if form is not None:
        new_config = new_config.replace(form=form)
    new_config = resolve_base(model, new_config, current)
    _same_axis(current, new_config)
    target = gauged.parameterization.with_gauge(_gauge(new_config))
    scales = gauged.convert(target, optimizer=optimizer, schedulers=schedulers,
                            form=new_config.form)
    gauged.replanner = HFReplanner(new_config)
    _record(model, new_config, target)
    return scales


def materialize(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                schedulers: Any = ()) -> dict[str, float]:
    """Plain -> materialized form, same gauge: the Parameters then hold w = W/m."""
    return convert_gauge(model, None, optimizer, schedulers, form=MATERIALIZED)


def to_plain(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             schedulers: Any = ()) -> dict[str, float]:
    """Materialized -> plain form, same gauge: the Parameters then hold W, nothing is swapped."""
    return convert_gauge(model, None, optimizer, schedulers, form=PLAIN)


def form_of(model: nn.Module) -> str:
    """"plain" or "materialized": the form a gauged model is in."""
    return get_gauged(model).form


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
    """Per tensor: role, fan_in, uses, multiplier, lr factor, init std (for `gaugeconv roles`).

    The numbers are the named gauge's (what its materialized form stores and applies); ``form``
    says which form the model is in.
    """
    gauged = get_gauged(model)
    infos: Mapping[str, TensorRoleInfo] = peft_inner(model).__dict__["_gaugeconv_roles"]
    rows = []
    for name, plan in gauged.parameterization.plans.items():
        info = infos[name]
        rows.append({
            "name": name, "shape": list(plan.spec.shape), "module": info.module_type,
            "role": plan.spec.role.value, "fan_in": plan.spec.fan_in, "source": info.source,
            "uses": list(info.uses), "multiplier": plan.multiplier, "lr_factor": plan.lr_factor,
            "init_std": plan.init_std if plan.spec.init == "normal" else None,
            "form": gauged.form,
        })
    return rows
