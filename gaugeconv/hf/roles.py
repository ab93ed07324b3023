"""Role inference for Hugging Face models (THEORY.md section 1).

Which dimensions grow with width is found by building the same architecture at twice the width
on the meta device (no memory) and comparing shapes (microsoft/mup's base-shapes idea). The
wider config follows each config's own semantics (``width_scaling``); which axes of a tensor are
its inputs and which its outputs depends on the module type (``module_rules``, where the table
of layouts is). Role by (fan-in grows, fan-out grows): (no, yes) readin, (yes, yes) hidden,
(yes, no) readout, (no, no) fixed. A tied tensor (one stored tensor with several uses, such as
GPT-2's wte and lm_head) takes the role of GaugeConfig.tied_role; its uses share its multiplier.

Nothing is guessed: a tensor whose module type no rule covers, or whose name the double-width
twin lacks, is an error naming it; so is a model whose roles have no readout, no hidden tensor
or nothing but fixed tensors (unless GaugeConfig(allow_unusual_roles=True) confirms it), since
each of these usually means a width field that did not scale.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import RoleError
from ..model import tensor_uses
from ..richness import Role
from ..spec import TensorSpec
from .config import GaugeConfig
from .module_rules import Axes, axes_for, axes_from_parent
from .width_scaling import WIDTH_FIELDS, ScaledField, wider_config, width_of

__all__ = [
    "WIDTH_FIELDS", "infer_specs", "TensorRoleInfo", "width_of", "role_counts", "role_flags",
    "role_verdict", "scaled_fields", "twin_model",
]

_ROLE = {
    (False, True): Role.READIN, (True, True): Role.HIDDEN,
    (True, False): Role.READOUT, (False, False): Role.FIXED,
}
_PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.([^.]+)$")


@dataclass(frozen=True)
class TensorRoleInfo:
    """The inferred role of one stored tensor, with the evidence."""

    spec: TensorSpec
    module_type: str
    uses: tuple[str, ...]
    in_grows: bool
    out_grows: bool
    source: str  # "shapes", "override", "tied"
    rule: str = ""  # the module rule that gave the axes (module_rules.RULES, "declared:...")
    other_grows: bool = False  # an axis that is neither input nor output grew
    use_roles: tuple[Role, ...] = ()  # the role of each use (a tied tensor has several)


def twin_model(model: nn.Module, config: GaugeConfig) -> tuple[nn.Module, list[ScaledField]]:
    """The model built at twice the width on the meta device (no memory), with the config
    fields that grew (hf/width_scaling.py); LoRA adapters are added as on the model. Role
    inference compares its shapes, the attention scale its head dimensions and scales."""
    hf_config = getattr(model, "config", None)
    if hf_config is None:
        raise RoleError(f"{type(model).__name__} has no .config: pass a PreTrainedModel")
    wide, report = wider_config(hf_config, 2, config.width, config.width_fields)
    with torch.device("meta"):
        try:
            twin = type(model)(wide)
        except Exception as err:  # an architecture whose config does not scale this way
            raise RoleError(
                f"could not build {type(model).__name__} at twice the width to infer roles "
                f"({type(err).__name__}: {err}); scaled fields: "
                f"{', '.join(f.path for f in report)}; fix them with GaugeConfig(width_fields=)"
            ) from err
        from .peft import adapters_like  # LoRA layers: the twin gets the same adapters

        twin = adapters_like(model, twin)
    return twin, report


def _twin_shapes(
    model: nn.Module, config: GaugeConfig
) -> tuple[dict[str, tuple[int, ...]], list[ScaledField]]:
    twin, report = twin_model(model, config)
    shapes = {n: tuple(p.shape) for n, p in twin.named_parameters(remove_duplicate=False)}
    return shapes, report


def _match(name: str, patterns: Mapping[str, Any]) -> Any:
    for pattern, value in patterns.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return None


def _axes_of_use(
    use: str, shape: tuple[int, ...], modules: Mapping[str, nn.Module], user: Mapping[str, Any]
) -> tuple[Axes | None, str]:
    """The axes of one use and its module's type name; parametrizations take their owner's."""
    module_path, _, attr = use.rpartition(".")
    module = modules[module_path]
    found = _PARAMETRIZED.match(module_path)
    if found and attr.startswith("original"):
        owner = modules[found.group(1)]
        axes = axes_for(owner, found.group(2), shape, user)
        if axes is not None:
            axes = Axes(axes.inputs, axes.outputs, f"{axes.rule} (parametrized)")
        return axes, type(owner).__name__
    parent_path, _, child = module_path.rpartition(".")
    if child and parent_path in modules:
        axes = axes_from_parent(modules[parent_path], f"{child}.{attr}", shape)
        if axes is not None:
            return axes, type(modules[parent_path]).__name__
    return axes_for(module, attr, shape, user), type(module).__name__


class _UseRole(NamedTuple):
    """The role one use of a tensor gets from its axes and the twin's shape."""

    role: Role
    fan_in: int
    module_type: str
    in_grows: bool
    out_grows: bool
    rule: str
    other_grows: bool


def _role_of_use(
    use: str, shape: tuple[int, ...], modules: Mapping[str, nn.Module],
    user: Mapping[str, Any], wide: Mapping[str, tuple[int, ...]],
) -> _UseRole | str:
    """The use's role, or why there is none: its module type's name, or "absent" from the twin."""
    axes, mtype = _axes_of_use(use, shape, modules, user)
    if axes is None:
        return mtype
    wide_shape = wide.get(use)
    if wide_shape is None or len(wide_shape) != len(shape):
        return "absent"
    grows = [w != s for w, s in zip(wide_shape, shape)]
    in_grows = any(grows[a] for a in axes.inputs)
    out_grows = any(grows[a] for a in axes.outputs)
    other = any(g for a, g in enumerate(grows) if a not in axes.inputs + axes.outputs)
    fan_in = axes.fan_in or (math.prod(shape[a] for a in axes.inputs) if axes.inputs else 1)
    return _UseRole(_ROLE[(in_grows, out_grows)], fan_in, mtype, in_grows, out_grows, axes.rule,
                    other)


def infer_specs(
    model: nn.Module,
    config: GaugeConfig,
    module_axes: Mapping[str, Any] | None = None,
) -> dict[str, TensorRoleInfo]:
    """Role, fan_in and init kind of every stored tensor of a model.

    ``module_axes`` adds rules to ``config.module_axes`` (both in the module_rules format).
    """
    user = {**config.module_axes, **dict(module_axes or {})}
    wide, _ = _twin_shapes(model, config)
    by_stored: dict[str, list[str]] = {}
    for use, stored in tensor_uses(model).items():
        by_stored.setdefault(stored, []).append(use)
    modules = dict(model.named_modules(remove_duplicate=False))  # a block registered twice
    params = dict(model.named_parameters())
    out: dict[str, TensorRoleInfo] = {}
    missing, absent = [], []
    for stored, use_list in by_stored.items():
        shape = tuple(params[stored].shape)
        per_use = [_role_of_use(use, shape, modules, user, wide) for use in use_list]
        known = [u for u in per_use if isinstance(u, _UseRole)]
        override = _match(stored, config.role_overrides)
        if override is None and len(known) < len(per_use):
            why = next(u for u in per_use if isinstance(u, str))
            (absent if why == "absent" else missing).append(
                stored if why == "absent" else f"{stored} ({why})")
            continue
        source = "tied" if len(known) > 1 else "shapes"
        wanted = Role.parse(config.tied_role)
        chosen = next((u for u in known if u.role is wanted), known[0]) if known else _UseRole(
            Role.FIXED, 1, str(per_use[0]), False, False, "override", False)
        role, fan_in = chosen.role, chosen.fan_in
        if override is not None:
            role, source = Role.parse(override), "override"
        fan_override = _match(stored, config.fan_in_overrides)
        if fan_override is not None:
            fan_in = int(fan_override)
        init = "normal" if len(shape) >= 2 else "keep"
        spec = TensorSpec(stored, role, int(fan_in), shape, init)
        out[stored] = TensorRoleInfo(
            spec, chosen.module_type, tuple(use_list), chosen.in_grows, chosen.out_grows, source,
            chosen.rule, chosen.other_grows, tuple(u.role for u in known))
    if absent:
        raise RoleError(
            f"{len(absent)} tensor(s) have no counterpart in the double-width twin of "
            f"{type(model).__name__}: {', '.join(absent[:6])}{' ...' if len(absent) > 6 else ''}"
            "; give their roles with GaugeConfig(role_overrides={pattern: role})"
        )
    if missing:
        raise RoleError(
            f"no role can be inferred for {len(missing)} tensor(s): {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}; declare the module type with "
            "GaugeConfig(module_axes={class name: rule}) or the tensors with "
            "GaugeConfig(role_overrides={pattern: role})"
        )
    problems = role_verdict(out)
    if problems and not config.allow_unusual_roles:
        raise RoleError(
            f"{type(model).__name__}: {'; '.join(problems)} ({_counts_text(out)}). This usually "
            "means a width field that did not scale or a missing head: inspect with `gaugeconv "
            "roles`, fix with width_fields=/role_overrides=, or confirm the roles with "
            "GaugeConfig(allow_unusual_roles=True) (gaugeconv roles --allow-unusual-roles)"
        )
    return out


def scaled_fields(model: nn.Module, config: GaugeConfig) -> list[ScaledField]:
    """The config fields that grow in the double-width twin (what role inference compared)."""
    return wider_config(model.config, 2, config.width, config.width_fields)[1]


def role_counts(infos: Mapping[str, TensorRoleInfo]) -> dict[str, int]:
    counts = {role.value: 0 for role in Role}
    for info in infos.values():
        counts[info.spec.role.value] += 1
    return counts


def _counts_text(infos: Mapping[str, TensorRoleInfo]) -> str:
    return ", ".join(f"{n} {role}" for role, n in role_counts(infos).items())


def role_verdict(infos: Mapping[str, TensorRoleInfo]) -> list[str]:
    """Refusals: no readout, no hidden tensor, or every tensor fixed.

    A tied tensor whose optimizer role is readin (tied_role="readin") still has a readout use.
    """
    counts = role_counts(infos)
    if counts["fixed"] == len(infos):
        return ["every tensor is fixed (nothing grows with width)"]
    problems = []
    readout_use = any(Role.READOUT in info.use_roles for info in infos.values())
    if counts["readout"] == 0 and not readout_use:
        problems.append("no readout tensor")
    if counts["hidden"] == 0:
        problems.append("no hidden tensor")
    return problems


def role_flags(infos: Mapping[str, TensorRoleInfo], widths: set[int]) -> list[str]:
    """Warnings for `gaugeconv roles`: roles that are legal but often a sign of a wrong twin.

    A readout inside a numbered block of layers (routers excepted: they are readouts by
    design), a fixed matrix with a dimension equal to a width of the model, and a tensor that
    grows along an axis that is neither its input nor its output.
    """
    flags = []
    for name, info in infos.items():
        role, shape = info.spec.role, info.spec.shape
        if role is Role.READOUT and re.search(r"\.\d+\.", name) and info.rule != "router":
            flags.append(f"{name}: readout inside the network (a numbered block of layers)")
        if role is Role.FIXED and len(shape) >= 2 and widths & set(shape):
            flags.append(f"{name}: fixed, but its shape {list(shape)} has a width-sized dimension")
        if info.other_grows:
            flags.append(f"{name}: grows along an axis that is neither its input nor its output")
    return flags
