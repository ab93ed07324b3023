"""The attention logit scale at richness r (THEORY.md sections 2, 6 and 7).

A head computes logits l = s * q.k from a query q and a key k of dimension d (the head
dimension; it grows with width when the head count is fixed). q and k are hidden
representations: entries of order one (D0), and after training they move by
rho = n^(r - 1/2) relative (the richness desideratum). The update of q is driven by the gradient
dL/dq = s * sum_j (dL/dl_j) k_j, so it is *aligned* with the keys; the change of a logit is the
coherent sum

    dl = s * (dq . k + q . dk)  ~  s * d * rho.

The attention output o = sum_j softmax(l)_j v_j moves by dl (through the weights) plus rho
(through the values), and o is a hidden representation that must move by rho too, as must
everything downstream of it. So s * d must stay of order one: s ~ 1/d, at every richness
(the largest scale with that property, so the logits still learn as much as they can). With
1/sqrt(d) the logits move sqrt(d) times too much: at r = 1/2 they blow up (muP's known 1/d),
at r < 1/2 they move by n^r instead of n^(r - 1/2) and make the attention output, and the
residual stream after it, richer than r.

Consequences that the coordinate check expects (derived in ``coord_check._expected``): with
s ~ 1/d the gradient reaching q and k at init is n^-1/2 times a hidden representation's
(dL/dl is an incoherent sum at init), so the first step's loss share of q and k falls like
n^-1/2 for Adam (a sign-like step: decrease ~ lr * sum |g|) and n^-1 for SGD (~ lr * |g|^2),
and for SGD their own-update share like n^-1/2 (Adam normalises the step).

The base head dimension d0 fixes the constant: at d = d0 the scale is the architecture's own,
so applying a richness to a pretrained model keeps its function; only wider or narrower
siblings differ. For an architecture whose own scale goes like d^e (e = -1/2 for
1/sqrt(d); e = 0 for GPT-2 with ``scale_attn_weights=False``; constant factors such as GPT-2's
1/(layer_idx + 1) are kept), the scale at head dimension d is

    s(d) = s_arch(d) * (d0 / d)^(p + e),   p = LOGIT_EXPONENT = 1,

i.e. (1/sqrt(d0)) * (d0/d) for the usual 1/sqrt(d). e is measured on the twin that role inference builds
(hf/roles.py twin_model: the config at twice the width, meta device). The scale is a property of
the richness, never of the gauge: gauge conversions leave it alone.

It is set through the attention modules' own ``scaling`` attribute, which transformers 5
passes to every attention implementation (eager, sdpa, flash) as ``scaling=``. Attention
modules without such an attribute are listed by ``unsupported_attention``; where their scale
would have to change (d != d0) ``apply_attention_scale`` refuses them by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import GaugeError
from .config import GaugeConfig
from .roles import twin_model

__all__ = [
    "LOGIT_EXPONENT", "AttentionScale", "attention_modules", "unsupported_attention",
    "logit_scale", "head_dims", "with_attention_base", "apply_attention_scale",
    "describe_attention",
]

LOGIT_EXPONENT = 1.0  # s ~ d^-1 at every richness r in [0, 1/2] (module docstring)

_NATIVE = "_gaugeconv_native_scaling"  # per-instance: the architecture's own scale
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_head")


@dataclass(frozen=True)
class AttentionScale:
    """The logit scale of one attention module."""

    name: str
    module: str
    head_dim: int
    native: float   # the architecture's own scale at this head dimension
    scaling: float  # the scale at the model's richness and base head dimension

    @property
    def factor(self) -> float:
        return self.scaling / self.native


def _head_dim(module: nn.Module) -> int | None:
    for attr in _HEAD_DIM_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules with a float ``scaling`` attribute and a head dimension: transformers 5's
    attention classes (LlamaAttention, GPT2Attention, BertSelfAttention, ...)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "scaling", None), float) and _head_dim(module) is not None:
            yield name, module


def _unsupported(model: nn.Module) -> list[tuple[str, nn.Module]]:
    supported = {name for name, _ in attention_modules(model)}
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name in supported or "attention" not in type(module).__name__.lower():
            continue
        if any(s.startswith(name + ".") or name.startswith(s + ".") for s in supported):
            continue  # a wrapper around a supported module (BertAttention), or a part of one
        own = any(p.ndim >= 2 for p in module.parameters())
        if own and not any(name.startswith(o + ".") for o, _ in out):
            out.append((name, module))
    return out


def unsupported_attention(model: nn.Module) -> list[str]:
    """Attention modules whose logit scale cannot be set: 'Attention' in the class name, own
    projection weights, no float ``scaling`` (they compute their scale inline)."""
    return [f"{n} ({type(m).__name__})" for n, m in _unsupported(model)]


def _any_head_dim(module: nn.Module) -> int | None:
    """The head dimension of a module or of the first submodule that states one."""
    for sub in module.modules():
        d = _head_dim(sub)
        if d is not None:
            return d
    return None


def logit_scale(native: float, head_dim: int, base_head_dim: int,
                native_exponent: float) -> float:
    """s(d) = s_arch(d) * (d0/d)^(LOGIT_EXPONENT + e): the architecture's own scale at d0."""
    return native * (base_head_dim / head_dim) ** (LOGIT_EXPONENT + native_exponent)


def _native(module: nn.Module) -> float:
    return module.__dict__.get(_NATIVE, module.scaling)


def head_dims(model: nn.Module) -> list[int]:
    """The distinct head dimensions of a model's attention modules (those without a ``scaling``
    attribute included), sorted; [] for a model without attention."""
    modules = [m for _, m in attention_modules(model)] + [m for _, m in _unsupported(model)]
    return sorted({d for d in map(_any_head_dim, modules) if d is not None})


def with_attention_base(model: nn.Module, config: GaugeConfig,
                        recorded: GaugeConfig | None = None) -> GaugeConfig:
    """``config`` with attention_base_head_dim filled in when it is None: the recorded entry's,
    else the model's own head dimension (a model is its own base: its function is kept)."""
    if config.attention_base_head_dim is not None:
        return config
    if recorded is not None and recorded.attention_base_head_dim is not None:
        return config.replace(attention_base_head_dim=recorded.attention_base_head_dim)
    dims = head_dims(model)
    if not dims:
        return config
    if len(dims) > 1:
        raise GaugeError(
            f"the attention modules have head dimensions {dims}: give "
            "GaugeConfig(attention_base_head_dim=) for the base model's largest one"
        )
    return config.replace(attention_base_head_dim=dims[0])


def _native_exponents(model: nn.Module, config: GaugeConfig) -> dict[str, float]:
    """e per attention module: how the architecture's own scale moves with the head dimension,
    measured on the twin at twice the width that role inference builds (meta device)."""
    twin, _ = twin_model(model, config)
    twins = dict(attention_modules(twin))
    out = {}
    for name, module in attention_modules(model):
        other = twins.get(name)
        d, d2 = _head_dim(module), None if other is None else _head_dim(other)
        if other is None or d2 == d:
            raise GaugeError(f"{name} ({type(module).__name__}): its head dimension does not "
                             "grow with the width, so its scale's width exponent is unknown")
        out[name] = math.log(other.scaling / _native(module)) / math.log(d2 / d)
    return out


def apply_attention_scale(model: nn.Module, config: GaugeConfig) -> list[AttentionScale]:
    """Set every attention module's ``scaling`` for ``config``'s base head dimension.

    Idempotent (the architecture's own value is kept on the instance); at d = d0 nothing
    changes. Refuses an attention module without a ``scaling`` attribute when its scale would
    have to change.
    """
    d0 = config.attention_base_head_dim
    if d0 is None:
        return []
    unsupported = _unsupported(model)
    known = {_any_head_dim(m) for _, m in [*attention_modules(model), *unsupported]} - {None}
    usual = known.pop() if len(known) == 1 else None  # a module that states none shares it
    blocked = [f"{n} ({type(m).__name__})" for n, m in unsupported
               if (_any_head_dim(m) or usual) != d0]
    if blocked:
        raise GaugeError(
            f"attention module(s) {', '.join(blocked[:4])} compute their logit scale inline "
            f"(no `scaling` attribute): it cannot be moved from head dimension {d0} to this "
            f"model's, so richness {config.richness:g} cannot be applied"
        )
    modules = list(attention_modules(model))
    moving = [(n, m) for n, m in modules if _head_dim(m) != d0]
    exponents = _native_exponents(model, config) if moving else {}
    out = []
    for name, module in modules:  # everything is computed before anything is set
        native = _native(module)
        d = _head_dim(module)
        scaling = native if d == d0 else logit_scale(native, d, d0, exponents[name])
        out.append(AttentionScale(name, type(module).__name__, d, native, scaling))
    for (_, module), scale in zip(modules, out):
        module.__dict__[_NATIVE] = scale.native
        module.scaling = scale.scaling
    return out


def describe_attention(model: nn.Module, config: GaugeConfig | None) -> dict[str, Any]:
    """The attention logit scales of a model, for ``gaugeconv roles``."""
    rows = [AttentionScale(n, type(m).__name__, _head_dim(m), _native(m), m.scaling)
            for n, m in attention_modules(model)]
    return {
        "base_head_dim": None if config is None else config.attention_base_head_dim,
        "logit_exponent": LOGIT_EXPONENT,
        "modules": [dict(name=a.name, module=a.module, head_dim=a.head_dim, native=a.native,
                         scaling=a.scaling) for a in rows],
        "unsupported": unsupported_attention(model),
    }
