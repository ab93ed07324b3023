"""The same architecture at k times the width: which config fields grow (THEORY.md section 1).

Role inference compares tensor shapes at two widths, so the wider config must follow the
config's own semantics: a field that is a width grows, a count (vocabulary, positions, layers,
heads, experts, labels) does not. Each integer field of the config, and of every nested
sub-config (``text_config``, ``vision_config``: any ``PretrainedConfig`` attribute, measured
against its own width), is decided in this order:

1. ``width_fields`` overrides: {"field" or "sub.field": "scale" | "fixed"}.
2. Width fields by name (hidden_size, intermediate_size, head_dim, d_model, hidden_sizes, ...):
   scale; list-valued ones (ConvNeXt's ``hidden_sizes``) element by element.
3. Counts and sizes of other spaces by name (vocab, positions, layers, heads, experts, labels,
   image and patch sizes, strides, kernels, output spaces such as CLIP's joint embedding
   ``projection_dim`` or a classification head's ``classifier_proj_size``...): fixed.
4. Derived width fields by name (``embedding_size``, ``word_embed_proj_dim``,
   ``pooler_hidden_size``, MobileBERT's bottleneck sizes, Mamba's ``time_step_rank``...): the
   architecture's own design decides where it is known (ARCHITECTURE_FIELDS: MobileBERT's
   bottleneck and ELECTRA's and OPT's embedding sizes are proportional to the width, ALBERT's
   factorized ``embedding_size`` is independent of it); otherwise a value equal to a whole
   multiple of the width scales, an "auto" rank ceil(n/16) is recomputed, and any other value
   cannot be decided: an error names the field and the override to set.
5. Any other positive integer equal to a whole multiple of the width scales; the rest is fixed.

Properties (Falcon's ``head_dim``) are derived by the config itself and never set. The report
lists every field that was scaled and why, so ``gaugeconv roles`` can show it.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import RoleError

__all__ = [
    "WIDTH_FIELDS", "DERIVED_FIELDS", "ARCHITECTURE_FIELDS", "ScaledField", "wider_config",
    "width_of", "config_widths",
]

WIDTH_FIELDS = frozenset({
    "hidden_size", "n_embd", "d_model", "dim", "intermediate_size", "n_inner", "ffn_dim",
    "d_ff", "head_dim", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim", "d_kv", "embed_dim",
    "hidden_sizes", "d_inner", "ffn_hidden_size", "moe_intermediate_size",
    "shared_expert_intermediate_size", "attention_hidden_size", "kv_channels",
})

_FIXED = re.compile(
    r"vocab|position|layer|head|_ids?$|token|label|expert|window|bucket|image_size|patch_size|"
    r"channels|mel_bins|stride|kernel|group|chunk|^max_|length|depths|stage|context|^num_|^n_|"
    r"projection_dim|classifier_proj|codevector|xvector|tdnn|conv_dim|seed|steps?$|interval|every|ratio|^top_k"
)

_AUTO_RANK: Callable[[int], int] = lambda n: math.ceil(n / 16)  # noqa: E731  (Mamba "auto")

# derived width fields: None = proportional test only; a function = the config's own "auto" rule
DERIVED_FIELDS: Mapping[str, Callable[[int], int] | None] = MappingProxyType({
    "embedding_size": None, "word_embed_proj_dim": None, "pooler_hidden_size": None,
    "intra_bottleneck_size": None, "true_hidden_size": None, "output_hidden_size": None,
    "projection_size": None, "time_step_rank": _AUTO_RANK, "mamba_dt_rank": _AUTO_RANK,
})

# what an architecture's design says about its derived fields: "proportional" (scales whatever
# its value) or "fixed" (independent of the width)
ARCHITECTURE_FIELDS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "AlbertConfig": {"embedding_size": "fixed"},  # E = 128 from base (768) to xxlarge (4096)
    "MobileBertConfig": {"embedding_size": "proportional", "intra_bottleneck_size": "proportional",
                         "true_hidden_size": "proportional"},
    "ElectraConfig": {"embedding_size": "proportional"},  # small: 128 / 256, base: 768 / 768
    "OPTConfig": {"word_embed_proj_dim": "proportional"},  # 350m: 512 / 1024, others equal
})

_WIDTH_NAMES = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")


@dataclass(frozen=True)
class ScaledField:
    """One config field that grows with width in the wider twin."""

    path: str
    old: Any
    new: Any
    reason: str  # "width field", "derived", "auto rule", "multiple of the width", "override"


def width_of(config: object) -> int:
    """The reference width n of a config: its hidden size (hidden_size, n_embd, d_model, dim)."""
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise RoleError(
        f"{type(config).__name__} has no hidden_size/n_embd/d_model: give GaugeConfig(width=)"
    )


def config_widths(config: Any, width: int | None = None) -> set[int]:
    """The widths of a config and of its sub-configs (for flagging width-sized fixed tensors)."""
    found = {width} if width else set()
    own = _own_width(config, None)
    if own:
        found.add(own)
    for value in vars(config).values():
        if _is_config(value):
            found |= config_widths(value)
    return found


def _own_width(config: object, fallback: int | None) -> int | None:
    for name in _WIDTH_NAMES:
        value = vars(config).get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return fallback


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(_is_int(x) for x in v)


def _times(v: Any, k: int) -> Any:
    return type(v)(x * k for x in v) if isinstance(v, (list, tuple)) else v * k


def _is_config(v: Any) -> bool:
    from transformers import PretrainedConfig

    return isinstance(v, PretrainedConfig)


def _override(overrides: Mapping[str, str], path: str, name: str) -> str | None:
    return overrides.get(path, overrides.get(name))


def _decide(
    name: str, path: str, value: Any, width: int | None, factor: int, owner: str,
    overrides: Mapping[str, str],
) -> tuple[Any, str] | None:
    """(new value, reason) for a field that grows, None for a fixed one; raises if undecidable."""
    choice = _override(overrides, path, name)
    if choice is not None:
        return (_times(value, factor), "override") if choice == "scale" else None
    if name in WIDTH_FIELDS:
        return _times(value, factor), "width field"
    if _FIXED.search(name):
        return None
    if not _is_int(value) or value <= 0:
        return None
    if name in DERIVED_FIELDS:
        design = ARCHITECTURE_FIELDS.get(owner, {}).get(name)
        if design == "fixed":
            return None
        if design == "proportional":
            return value * factor, "derived (design)"
        if width is None:
            raise RoleError(
                f"{owner}.{path}={value} is a derived width field but the config has no width to "
                f"compare it with: give GaugeConfig(width=) or width_fields={{'{path}': 'scale'}}"
            )
        auto = DERIVED_FIELDS[name]
        if auto is not None and value == auto(width):
            return auto(width * factor), "auto rule"
        if value % width == 0:
            return value * factor, "derived"
        raise RoleError(
            f"{owner}.{path}={value} is neither a multiple of the width {width} nor its "
            f"default rule: say whether it grows with width with "
            f"GaugeConfig(width_fields={{'{path}': 'scale'}}) or {{'{path}': 'fixed'}}"
        )
    if width is not None and value % width == 0:
        return value * factor, "multiple of the width"
    return None


def _scale_into(
    config: Any, wide: Any, factor: int, width: int | None, prefix: str,
    overrides: Mapping[str, str], report: list[ScaledField],
) -> None:
    owner = type(config).__name__
    for name, value in vars(config).items():
        if name.startswith("_"):
            continue
        path = prefix + name
        if isinstance(getattr(type(config), name, None), property):
            continue  # derived by the config itself (Falcon's head_dim)
        if _is_config(value):
            sub_width = _own_width(value, width)
            _scale_into(value, getattr(wide, name), factor, sub_width, path + ".", overrides,
                        report)
            continue
        if not (_is_int(value) or (_is_int_list(value) and name in WIDTH_FIELDS)):
            continue
        decided = _decide(name, path, value, width, factor, owner, overrides)
        if decided is None:
            continue
        new, reason = decided
        setattr(wide, name, new)
        report.append(ScaledField(path, value, new, reason))


def wider_config(
    config: Any,
    factor: int = 2,
    width: int | None = None,
    overrides: Mapping[str, str] | None = None,
) -> tuple[Any, list[ScaledField]]:
    """A deep copy of ``config`` at ``factor`` times the width, and the fields that grew.

    ``width``: the reference width for a config without a hidden size (GaugeConfig.width).
    ``overrides``: {"field" or "sub_config.field": "scale" | "fixed"} (GaugeConfig.width_fields).
    """
    overrides = dict(overrides or {})
    wide = copy.deepcopy(config)
    report: list[ScaledField] = []
    _scale_into(config, wide, factor, _own_width(config, width), "", overrides, report)
    known = {f.path for f in report} | {f.path.rpartition(".")[2] for f in report}
    unused = [k for k, v in overrides.items() if v == "scale" and k not in known]
    if unused:
        raise RoleError(
            f"width_fields names {unused}, which {type(config).__name__} does not have as an "
            "integer field"
        )
    if not report:
        raise RoleError(
            f"no field of {type(config).__name__} grows with width, so no role can be inferred: "
            "name the width fields with GaugeConfig(width_fields={field: 'scale'})"
        )
    return wide, report
