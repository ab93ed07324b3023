"""LoRA (peft) on gauged models: roles for adapters, training, merging (issue 8).

* Adapter tensors get roles from their shapes like any tensor (THEORY.md section 1): the role
  twin built at twice the width carries the same adapters (``adapters_like``). LoRA A
  ([rank, fan_in]) has a fan-in that grows with width and a fixed rank: readout-like, fan_in = n.
  LoRA B ([fan_out, rank]) is readin-like with fan_in = rank. A tensor the twin cannot place is
  an error (roles.py), never a silent "fixed".
* The frozen base layers of LoRA (``*.base_layer.*``) carry role "fixed" (m = 1 in every named
  gauge): they are not trained, so their multiplier changes nothing in the dynamics, and keeping
  their stored tensor equal to the effective one lets peft's own ``merge_and_unload`` (which
  writes into ``base_layer.weight.data``) merge correctly.
* A model gauged before ``get_peft_model`` gets roles for its adapters (and its base layers
  "fixed") the first time gaugeconv builds its optimizer (``ensure_gauged``, i.e.
  ``GaugedModel.sync``; function kept bit for bit): GaugeTrainer and the optimizer factory
  accept the PeftModel. In the plain form nothing else changes; in the materialized form the
  base layers' multipliers are folded into them (m = 1).
* ``merge_and_unload(peft_model)``: peft's merge, then the merged model put back in the gauge.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import CONFIG_KEY, GaugeConfig

__all__ = [
    "adapters_like", "peft_inner", "has_adapters", "lora_config", "ensure_gauged",
    "merge_and_unload", "BASE_LAYER_PATTERN",
]

BASE_LAYER_PATTERN = "*.base_layer.*"


def peft_inner(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (the model itself otherwise)."""
    getter = getattr(type(model), "get_base_model", None)
    if getter is not None and hasattr(model, "peft_config"):
        return model.get_base_model()
    return model


def has_adapters(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None)) and any(
        hasattr(m, "base_layer") for m in model.modules()
    )


def adapters_like(model: nn.Module, twin: nn.Module) -> nn.Module:
    """``twin`` (a meta-device copy at another width) with the adapters ``model`` carries."""
    configs = getattr(model, "peft_config", None)
    if not configs or not has_adapters(model):
        return twin
    from peft import inject_adapter_in_model

    for name, cfg in configs.items():
        twin = inject_adapter_in_model(cfg, twin, adapter_name=name)
    return twin


def lora_config(config: GaugeConfig) -> GaugeConfig:
    """``config`` with LoRA's frozen base layers at role "fixed" (m = 1)."""
    overrides = dict(config.role_overrides)
    overrides.setdefault(BASE_LAYER_PATTERN, "fixed")
    return config.replace(role_overrides=overrides)


def _without_lora(config: GaugeConfig) -> GaugeConfig:
    overrides = {k: v for k, v in config.role_overrides.items() if k != BASE_LAYER_PATTERN}
    return config.replace(role_overrides=overrides)


@torch.no_grad()
def drop_gauge(model: nn.Module) -> None:
    """Fold every multiplier into its stored tensor (w <- m*w, the forward's own product) and
    take the gauge off; the config.json entry is removed too. The function is kept bit for bit."""
    from ..multipliers import multipliers_of
    from .model import _HANDLE

    handle = model.__dict__.pop(_HANDLE, None)
    model.__dict__.pop("_gaugeconv_roles", None)
    if handle is None:
        return
    folded: dict[int, Any] = {}
    for module in handle.hooks.modules():
        for attr, m in multipliers_of(module).items():
            p = module._parameters[attr]
            if id(p) not in folded:
                folded[id(p)] = p
                p.copy_(p * m)
    handle.hooks.remove()
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)


def is_stale(model: nn.Module) -> bool:
    """Whether the gauged model changed since its plan was made (adapters added or merged...)."""
    from .model import _HANDLE

    handle = model.__dict__.get(_HANDLE)
    return handle is not None and bool(handle.pending_changes())


def ensure_gauged(model: nn.Module) -> nn.Module:
    """The gauged transformers model inside ``model``, synced with its tensors (adapters...)."""
    from .model import _HANDLE

    inner = peft_inner(model)
    handle = inner.__dict__.get(_HANDLE)
    if handle is not None:
        handle.sync()
    return inner


def merge_and_unload(model: nn.Module, **kwargs: Any) -> nn.Module:
    """peft's merge_and_unload, with the merged model put back in its gauge (same function)."""
    from .model import apply_gauge, gauge_config_of

    inner = ensure_gauged(model)
    config = gauge_config_of(inner)
    merged = model.merge_and_unload(**kwargs)
    drop_gauge(merged)
    return apply_gauge(merged, _without_lora(config))
