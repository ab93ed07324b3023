"""Which axes of a tensor are its inputs and which its outputs, by module type.

A role is decided by which dimensions grow with width (THEORY.md section 1): fan-in axes growing
and fan-out axes growing give (no, yes) readin, (yes, yes) hidden, (yes, no) readout, (no, no)
fixed. Which axes are the fan-in and which the fan-out is a property of how the module uses the
tensor, so it is looked up by the module's class (its MRO, so subclasses inherit) and the
attribute name. Axes in neither set (the expert axis of a fused MoE tensor) never decide a role.

======================================  ==========================  =====================  ========
module / tensor                         layout                      in / out axes          rule
======================================  ==========================  =====================  ========
any 0-d or 1-d tensor                   [dim]                       () / (0,)              vector
nn.Linear (and subclasses)              [out, in]                   (1,) / (0,)            linear
GPT-2 Conv1D                            [in, out]                   (0,) / (1,)            conv1d
nn.Embedding                            [vocab, dim]                () / (1,)              lookup
nn.ConvNd (depthwise too)               [out, in/groups, k...]      (1, 2, ...) / (0,)     conv
nn.MultiheadAttention in_proj_weight    [3E, E]                     (1,) / (0,)            linear
...Experts (transformers 5 fused MoE)   [E, out, in]                (2,) / (1,)            experts
  with is_transposed=True               [E, in, out]                (1,) / (2,)            experts
...Router / ...TopKRouter weight        [experts, in]               (1,) / (0,)            router
position and cls embeddings, SigLIP     [1, tokens, dim]            () / all               elementwise
  probe, Swin relative position bias
  tables, SSM A_log / D / dt_bias,
  RWKV time_mix_*, MHA bias_k / bias_v
parametrizations (weight norm:          as the parametrized tensor  the owner's axes       (owner)
  original0 = g, original1 = v)         of the owning module
MobileBERT LM head dense.weight         [H - E, vocab]              (0,) / (1,), fan_in H  mobilebert-head
  and decoder.weight (tied)             [vocab, E]                  (1,) / (0,), fan_in H  mobilebert-head
======================================  ==========================  =====================  ========

MobileBERT's head multiplies by cat([decoder.weight.t(), dense.weight]) ([H, vocab]) outside the
two Linear modules, so both are parts of one readout matrix with fan_in H: the rule is keyed by
the parent module's class (``MobileBertLMPredictionHead``) and the child's name.

Elementwise tensors are added to or multiplied into activations entry by entry: fan_in 1, and
their role is readin when an axis grows (a cls token of width n), fixed otherwise (a bias table
[positions, heads]). A router maps width-n features to a fixed number of expert logits, so by the
table it is a readout inside the network (the same criterion as an lm_head: its output is a
fixed-size vector that a softmax reads).

User rules are plain data, so they are saved with the gauge in config.json:
``{"ClassName": "linear"}`` (every tensor of the class) or
``{"ClassName": {"attr_glob": "elementwise" | [[in axes], [out axes]]}}``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import GaugeError

__all__ = ["Axes", "RULE_NAMES", "axes_for", "axes_from_parent", "check_module_axes"]


@dataclass(frozen=True)
class Axes:
    """Input and output axes of one use of a tensor, and the rule that said so."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    rule: str
    fan_in: int | None = None  # when the use sums over more than these axes (see below)


if TYPE_CHECKING:  # only in annotations: GaugeConfig (which checks module_axes) needs no torch
    from torch import nn

Shape = tuple[int, ...]
RuleFn = Callable[["nn.Module", Shape], "tuple[tuple[int, ...], tuple[int, ...]] | None"]


def _linear(module: nn.Module, shape: Shape):
    return ((1,), (0,)) if len(shape) == 2 else None


def _conv1d(module: nn.Module, shape: Shape):  # transformers.pytorch_utils.Conv1D
    return ((0,), (1,)) if len(shape) == 2 else None


def _lookup(module: nn.Module, shape: Shape):
    return ((), (1,)) if len(shape) == 2 else None


def _conv(module: nn.Module, shape: Shape):
    return (tuple(range(1, len(shape))), (0,)) if len(shape) >= 3 else None


def _elementwise(module: nn.Module, shape: Shape):
    return ((), tuple(range(len(shape))))


def _experts(module: nn.Module, shape: Shape):
    if len(shape) == 2:  # per-expert biases [E, out]
        return ((), (1,))
    if len(shape) != 3:
        return None
    return ((1,), (2,)) if getattr(module, "is_transposed", False) else ((2,), (1,))


RULES: Mapping[str, RuleFn] = MappingProxyType({
    "linear": _linear, "conv1d": _conv1d, "lookup": _lookup, "conv": _conv,
    "elementwise": _elementwise, "experts": _experts, "router": _linear,
})
RULE_NAMES = tuple(RULES)

# class name -> rule for every tensor of the class (exact names, looked up along the MRO)
_BY_CLASS: Mapping[str, str] = MappingProxyType({
    "Linear": "linear", "Conv1D": "conv1d", "Embedding": "lookup", "EmbeddingBag": "lookup",
    "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv",
})
# (class-name glob, attribute glob) -> rule
_BY_PATTERN: tuple[tuple[str, str, str], ...] = (
    ("MultiheadAttention", "in_proj_weight", "linear"),
    ("MultiheadAttention", "[qkv]_proj_weight", "linear"),
    ("MultiheadAttention", "bias_[kv]", "elementwise"),
    ("*Experts", "*", "experts"),
    ("*Router", "weight", "router"),
    ("*Embeddings", "cls_token", "elementwise"),
    ("*Embeddings", "mask_token", "elementwise"),
    ("*Embeddings", "distillation_token", "elementwise"),
    ("*Embeddings", "register_tokens", "elementwise"),
    ("*Embeddings", "position_embeddings", "elementwise"),
    ("*RelativePositionBias", "relative_position_bias_table", "elementwise"),
    ("*SelfAttention", "relative_position_bias_table", "elementwise"),
    ("*PoolingHead", "probe", "elementwise"),
    ("*Mixer", "A_log", "elementwise"),
    ("*Mixer", "D", "elementwise"),
    ("*Mixer", "dt_bias", "elementwise"),
    ("Rwkv*", "time_mix_*", "elementwise"),
    ("Rwkv*", "time_decay", "elementwise"),
    ("Rwkv*", "time_first", "elementwise"),
)


def _mobilebert_head(parent: nn.Module, child: str, shape: Shape) -> Axes | None:
    width = parent.transform.dense.weight.shape[0]
    if child == "dense.weight" and len(shape) == 2:
        return Axes((0,), (1,), "mobilebert-head", width)
    if child == "decoder.weight" and len(shape) == 2:
        return Axes((1,), (0,), "mobilebert-head", width)
    return None


# parent class name -> rule for tensors of its children that the parent itself uses
_BY_PARENT: Mapping[str, Callable[[nn.Module, str, Shape], Axes | None]] = MappingProxyType({
    "MobileBertLMPredictionHead": _mobilebert_head,
})


def axes_from_parent(parent: nn.Module, child: str, shape: Shape) -> Axes | None:
    """Axes of ``parent.<child>`` (e.g. "dense.weight") when the parent reads it directly."""
    rule = _BY_PARENT.get(type(parent).__name__)
    return None if rule is None else rule(parent, child, shape)


def _user_rule(spec: Any, attr: str) -> Any:
    if isinstance(spec, str):
        return spec
    for pattern, rule in spec.items():
        if fnmatch.fnmatchcase(attr, pattern):
            return rule
    return None


def _apply(rule: Any, module: nn.Module, shape: Shape, label: str) -> Axes | None:
    if isinstance(rule, str):
        axes = RULES[rule](module, shape)
        return None if axes is None else Axes(axes[0], axes[1], label or rule)
    ins, outs = (tuple(int(a) for a in part) for part in rule)
    if any(a >= len(shape) for a in ins + outs):
        return None
    return Axes(ins, outs, label or "declared")


def axes_for(
    module: nn.Module, attr: str, shape: Shape, user: Mapping[str, Any] | None = None,
) -> Axes | None:
    """Input and output axes of ``module.<attr>`` (shape ``shape``); None when no rule covers it."""
    if len(shape) <= 1:
        return Axes((), (0,) if shape else (), "vector")
    for klass in type(module).__mro__:
        name = klass.__name__
        if user and name in user:
            rule = _user_rule(user[name], attr)
            if rule is not None:
                return _apply(rule, module, shape, f"declared:{rule if isinstance(rule, str) else 'axes'}")
        for cls_glob, attr_glob, rule in _BY_PATTERN:
            if fnmatch.fnmatchcase(name, cls_glob) and fnmatch.fnmatchcase(attr, attr_glob):
                return _apply(rule, module, shape, rule)
        if name in _BY_CLASS:
            return _apply(_BY_CLASS[name], module, shape, _BY_CLASS[name])
    return None


def check_module_axes(module_axes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate user rules (plain data, saved in config.json); returns a JSON-ready copy."""
    out: dict[str, Any] = {}
    for cls_name, spec in dict(module_axes).items():
        if isinstance(spec, str):
            _check_rule(cls_name, "*", spec)
            out[str(cls_name)] = spec
            continue
        if not isinstance(spec, Mapping):
            raise GaugeError(
                f"module_axes[{cls_name!r}] must be a rule name {list(RULE_NAMES)} or "
                "{attr_glob: rule name or [[in axes], [out axes]]} (rules are saved in "
                f"config.json, so no functions), not {type(spec).__name__}"
            )
        out[str(cls_name)] = {str(a): _check_rule(cls_name, a, r) for a, r in spec.items()}
    return out


def _check_rule(cls_name: str, attr: str, rule: Any) -> Any:
    if isinstance(rule, str):
        if rule not in RULES:
            raise GaugeError(
                f"module_axes[{cls_name!r}][{attr!r}]: unknown rule {rule!r}; rules: "
                f"{', '.join(RULE_NAMES)} or [[in axes], [out axes]]"
            )
        return rule
    ok = (isinstance(rule, (list, tuple)) and len(rule) == 2
          and all(isinstance(p, (list, tuple)) for p in rule)
          and all(isinstance(a, int) and not isinstance(a, bool) and a >= 0
                  for p in rule for a in p))
    if not ok:
        raise GaugeError(
            f"module_axes[{cls_name!r}][{attr!r}] = {rule!r}: give a rule name "
            f"({', '.join(RULE_NAMES)}) or [[in axes], [out axes]] with axis indices"
        )
    return [list(rule[0]), list(rule[1])]
