"""The base model of a width sweep (microsoft/mup's ``set_base_shapes`` base), and its absence.

mup users name a base model once and every base-relative quantity follows from it. In
gaugeconv's parameterization the multipliers, init and learning rates are absolute functions of
the width n (THEORY.md sections 2-3: alpha = gamma * n^r, no base width in them), so one quantity
is base-relative: the attention logit scale's base head dimension d0, at which the scale is the
architecture's own and from which it moves as (d0/d) (THEORY.md section 6, hf/attention.py).
``GaugeConfig(base_width=n0)`` names the base for every width of a sweep at once: d0 is the head
dimension of the same architecture at width n0, from the double-width twin that role inference
builds (hf/roles.py): the model's own d when the head dimension does not grow with the width,
d * n0 / n when it grows in proportion (a fixed head count); anything else, or a d0 that is not
an integer, is refused (give ``attention_base_head_dim`` then). An explicit
``attention_base_head_dim`` must agree with it. ``base_width`` is recorded in config.json and
kept by every gauge change.

Without a base a model is its own base (d0 = its head dimension). That keeps a pretrained
model's function, but a sweep that builds each width without a base gets the architecture's own
1/sqrt(d) at every width: not the richness's scale. The rule, ``BaseWidthWarning`` when all hold:

* the GaugeConfig names no base (no ``base_width``, no ``attention_base_head_dim``);
* model.config records no gauge entry (a model loaded from a gauged save, or built from such a
  config, carries its base: it is never warned about);
* the model was built from scratch: ``config._name_or_path`` is empty (transformers fills it in
  ``from_pretrained``; a model built from a config has none). A pretrained plain checkpoint is
  its own base: its function is kept, nothing to warn about;
* the model has attention with a head dimension (nothing else depends on a base).

``base_width`` equal to the model's own width says "this model is the base" and silences it.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import GaugeError
from .attention import head_dims, with_attention_base
from .config import GaugeConfig
from .roles import twin_model
from .width_scaling import width_of

__all__ = ["BaseWidthWarning", "base_head_dim", "built_from_scratch", "resolve_base"]


class BaseWidthWarning(UserWarning):
    """A model built from scratch is gauged with no base: it is taken as its own base."""


def built_from_scratch(model: nn.Module) -> bool:
    """True for a model built from a config, False for one loaded by ``from_pretrained``."""
    return not getattr(getattr(model, "config", None), "_name_or_path", "")


def _width(model: nn.Module, config: GaugeConfig) -> int:
    try:
        return width_of(model.config)
    except GaugeError:
        if config.width is None:
            raise
        return config.width


def _one_head_dim(model: nn.Module, what: str) -> int | None:
    dims = head_dims(model)
    if len(dims) > 1:
        raise GaugeError(
            f"the attention modules of {what} have head dimensions {dims}: give "
            "GaugeConfig(attention_base_head_dim=) for the base model's largest one"
        )
    return dims[0] if dims else None


def base_head_dim(model: nn.Module, config: GaugeConfig) -> int | None:
    """d0: the head dimension of the model's architecture at ``config.base_width`` (None
    without attention)."""
    n0 = config.base_width
    if n0 is None:
        raise GaugeError("base_head_dim needs GaugeConfig(base_width=)")
    d = _one_head_dim(model, "the model")
    n = _width(model, config)
    if d is None or n0 == n:
        return d
    d2 = _one_head_dim(twin_model(model, config)[0], "its double-width twin")
    if d2 == d:
        return d  # the head count grows with the width: every width has the same d
    if d2 != 2 * d:
        raise GaugeError(
            f"the head dimension is {d} at width {n} and {d2} at width {2 * n}: not in "
            f"proportion to the width, so base_width={n0} does not fix it; give "
            "GaugeConfig(attention_base_head_dim=) as well"
        )
    if (d * n0) % n:
        raise GaugeError(
            f"at base width {n0} the head dimension would be {d} * {n0} / {n}, not an integer: "
            "give a base width that divides into whole heads, or attention_base_head_dim="
        )
    return d * n0 // n


def resolve_base(model: nn.Module, config: GaugeConfig,
                 recorded: GaugeConfig | None = None) -> GaugeConfig:
    """``config`` with its base filled in: base_width from the recorded entry when not given,
    d0 from base_width (checked against an explicit one), then ``with_attention_base``; warns
    (BaseWidthWarning) by the rule in the module docstring."""
    if config.base_width is None and recorded is not None and recorded.base_width is not None:
        config = config.replace(base_width=recorded.base_width)
    if config.base_width is not None:
        d0 = base_head_dim(model, config)
        given = config.attention_base_head_dim
        if given is None and d0 is not None:
            config = config.replace(attention_base_head_dim=d0)
        elif given is not None and d0 is not None and given != d0:
            raise GaugeError(
                f"attention_base_head_dim={given} disagrees with base_width="
                f"{config.base_width}, whose head dimension is {d0}: give one of them"
            )
    elif (config.attention_base_head_dim is None and recorded is None
          and built_from_scratch(model) and head_dims(model)):
        n, d = _width(model, config), head_dims(model)[0]
        warnings.warn(
            f"{type(model).__name__} built from scratch at width {n} is gauged with no base: it "
            f"is its own base (attention d0 = its head dimension {d}, so its logit scale stays "
            "the architecture's own at this width). In a width sweep give every width the same "
            "GaugeConfig(base_width=n0) (or attention_base_head_dim=d0), as mup's "
            f"set_base_shapes does; base_width={n} says this model is the base",
            BaseWidthWarning,
            stacklevel=3,
        )
    return with_attention_base(model, config, recorded)
