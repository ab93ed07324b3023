"""Role inference for Hugging Face models (THEORY.md section 1).

Which dimensions grow with width is found by building the same architecture at twice the width
on the meta device (no memory) and comparing shapes (microsoft/mup's base-shapes idea). Which
axes of a tensor are its inputs and which its outputs depends on the module type:

=================  ===================  ====================  =======================
module             weight layout        fan_in                inputs / outputs axes
=================  ===================  ====================  =======================
nn.Linear          [out, in]            shape[1]              (1,) / (0,)
GPT-2 Conv1D       [in, out]            shape[0]              (0,) / (1,)
nn.Embedding       [vocab, dim]         1 (one-hot lookup)    () / (1,)
nn.ConvNd          [out, in, k...]      in * prod(k)          (1, 2, ...) / (0,)
any 1-d tensor     [dim]                1 (biases, norms)     () / (0,)
=================  ===================  ====================  =======================

Role by (fan-in grows, fan-out grows): (no, yes) readin, (yes, yes) hidden, (yes, no) readout,
(no, no) fixed. A tied tensor (one stored tensor with several uses, such as GPT-2's wte and
lm_head) takes the role of GaugeConfig.tied_role; its other uses share its multiplier.
Module types beyond these are declared with ``module_axes`` and single tensors with
``role_overrides``; a tensor that nothing covers is an error that names it.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RoleError
from ..model import tensor_uses
from ..richness import Role
from ..spec import TensorSpec
from .config import GaugeConfig

__all__ = ["WIDTH_FIELDS", "infer_specs", "TensorRoleInfo", "AxesRule", "width_of"]

# config fields that scale with the width; others (vocab, positions, heads, layers) do not.
WIDTH_FIELDS = (
    "hidden_size", "n_embd", "d_model", "dim", "intermediate_size", "n_inner", "ffn_dim",
    "d_ff", "head_dim", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim", "d_kv",
)

# (param attribute, shape) -> (input axes, output axes, lookup?)
AxesRule = Callable[[str, tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]


def _linear(attr, shape):
    return ((1,), (0,)) if len(shape) == 2 else ((), (0,))


def _conv1d(attr, shape):  # transformers.pytorch_utils.Conv1D: weight [in, out]
    return ((0,), (1,)) if len(shape) == 2 else ((), (0,))


def _embedding(attr, shape):
    return ((), (1,))


def _convnd(attr, shape):
    return (tuple(range(1, len(shape))), (0,)) if len(shape) > 1 else ((), (0,))


BUILTIN_AXES: dict[str, AxesRule] = {
    "Linear": _linear,
    "Conv1D": _conv1d,
    "Embedding": _embedding,
    "Conv1d": _convnd,
    "Conv2d": _convnd,
    "Conv3d": _convnd,
}


@dataclass(frozen=True)
class TensorRoleInfo:
    """The inferred role of one stored tensor, with the evidence."""

    spec: TensorSpec
    module_type: str
    uses: tuple[str, ...]
    in_grows: bool
    out_grows: bool
    source: str  # "shapes", "override", "tied"


def width_of(config: object) -> int:
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise RoleError(
        f"{type(config).__name__} has no hidden_size/n_embd/d_model: give GaugeConfig(width=)"
    )


def _wider_config(config: object, factor: int = 2) -> object:
    wide = copy.deepcopy(config)
    values = {f: getattr(config, f, None) for f in WIDTH_FIELDS}
    for f, v in values.items():
        if isinstance(v, int) and not isinstance(v, bool):
            setattr(wide, f, v * factor)
    return wide


def _shapes_at_double_width(model: nn.Module) -> dict[str, tuple[int, ...]]:
    config = getattr(model, "config", None)
    if config is None:
        raise RoleError(f"{type(model).__name__} has no .config: pass a PreTrainedModel")
    wide = _wider_config(config)
    with torch.device("meta"):
        try:
            twin = type(model)(wide)
        except Exception as err:  # an architecture whose config does not scale this way
            raise RoleError(
                f"could not build {type(model).__name__} at twice the width to infer roles "
                f"({err}); give role_overrides for its tensors"
            ) from err
        from .peft import adapters_like  # LoRA layers: the twin gets the same adapters

        twin = adapters_like(model, twin)
    return {n: tuple(p.shape) for n, p in twin.named_parameters(remove_duplicate=False)}


def _axes_rule(module: nn.Module, attr: str, shape, extra: Mapping[str, AxesRule]) -> AxesRule | None:
    if len(shape) <= 1:
        return lambda a, s: ((), (0,)) if len(s) == 1 else ((), ())
    for klass in type(module).__mro__:
        if klass.__name__ in extra:
            return extra[klass.__name__]
        if klass.__name__ in BUILTIN_AXES:
            return BUILTIN_AXES[klass.__name__]
    return None


def _match(name: str, patterns: Mapping[str, object]) -> object | None:
    for pattern, value in patterns.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return None


def infer_specs(
    model: nn.Module,
    config: GaugeConfig,
    module_axes: Mapping[str, AxesRule] | None = None,
) -> dict[str, TensorRoleInfo]:
    """Role, fan_in and init kind of every stored tensor of a model."""
    extra = dict(module_axes or {})
    wide = _shapes_at_double_width(model)
    uses = tensor_uses(model)
    by_stored: dict[str, list[str]] = {}
    for use, stored in uses.items():
        by_stored.setdefault(stored, []).append(use)
    modules = dict(model.named_modules(remove_duplicate=False))  # a block registered twice
    params = dict(model.named_parameters())
    out: dict[str, TensorRoleInfo] = {}
    missing = []
    for stored, use_list in by_stored.items():
        p = params[stored]
        shape = tuple(p.shape)
        per_use = []
        for use in use_list:
            module_path, _, attr = use.rpartition(".")
            module = modules[module_path]
            rule = _axes_rule(module, attr, shape, extra)
            if rule is None:
                per_use.append(None)
                continue
            in_axes, out_axes = rule(attr, shape)
            if use not in wide:  # never a silent "fixed"
                raise RoleError(
                    f"{use} ({type(module).__name__}) has no counterpart in the model built at "
                    "twice the width; declare its role with GaugeConfig(role_overrides=...)"
                )
            wide_shape = wide[use]
            in_grows = any(wide_shape[a] != shape[a] for a in in_axes)
            out_grows = any(wide_shape[a] != shape[a] for a in out_axes)
            fan_in = math.prod(shape[a] for a in in_axes) if in_axes else 1
            role = {
                (False, True): Role.READIN, (True, True): Role.HIDDEN,
                (True, False): Role.READOUT, (False, False): Role.FIXED,
            }[(in_grows, out_grows)]
            per_use.append((role, fan_in, type(module).__name__, in_grows, out_grows))
        override = _match(stored, config.role_overrides)
        fan_override = _match(stored, config.fan_in_overrides)
        known = [u for u in per_use if u is not None]
        if override is None and len(known) < len(per_use):
            missing.append(f"{stored} ({type(modules[use_list[0].rpartition('.')[0]]).__name__})")
            continue
        source = "shapes"
        if len(known) > 1:
            wanted = Role.parse(config.tied_role)
            chosen = next((u for u in known if u[0] is wanted), known[0])
            source = "tied"
        elif known:
            chosen = known[0]
        else:
            chosen = (Role.FIXED, 1, type(modules[use_list[0].rpartition(".")[0]]).__name__, False, False)
        role, fan_in, mtype, in_g, out_g = chosen
        if override is not None:
            role, source = Role.parse(override), "override"
        if fan_override is not None:
            fan_in = int(fan_override)
        init = "normal" if p.ndim >= 2 else "keep"
        spec = TensorSpec(stored, role, int(fan_in), shape, init)
        out[stored] = TensorRoleInfo(spec, mtype, tuple(use_list), in_g, out_g, source)
    if missing:
        raise RoleError(
            f"no role can be inferred for {len(missing)} tensor(s): {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}; declare the module type with module_axes= or "
            "the tensors with GaugeConfig(role_overrides={pattern: role})"
        )
    return out
