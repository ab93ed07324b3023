"""GaugeConfig: the gauge of a Hugging Face model, saved in its config.json (peft's habit).

It is stored as ``model.config.gaugeconv`` (a plain dict), so ``save_pretrained`` writes it into
config.json and any re-save keeps it. The recorded per-tensor multipliers let a loader check
that the entry agrees with the model it is applied to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import GaugeError
from ..forms import MATERIALIZED, PLAIN, check_form
from ..gauges import GAUGE_NAMES, NAMED_POINTS, resolve_point
from ..plan import WD_SCALINGS
from ..richness import Family, Richness, Role
from .module_rules import check_module_axes
from .width_scaling import width_of

__all__ = ["GaugeConfig", "CONFIG_KEY", "FORMAT_VERSION"]

CONFIG_KEY = "gaugeconv"
FORMAT_VERSION = 1


@dataclass
class GaugeConfig:
    """Where a model sits on the richness axis and in which gauge.

    richness: r in [0, 1/2] (a named point given as ``gauge`` fixes it).
    gauge: stp, mup, rescaling, custom, or a named point (ntp, ntp-lr, mup, mup-lr, mfp).
    gamma: prefactor of alpha = gamma * n**r.
    optimizer: the optimizer family the learning rates are for: "adam" (Adam, AdamW...) or "sgd".
    width: the reference width n; it is the config's hidden size, so give it only for configs
        without a hidden_size/n_embd/d_model field.
    tied_role: the role whose learning rate a tied embedding/lm_head tensor follows. Both uses
        share one multiplier (a plain checkpoint uses the same tensor twice), so one role's
        learning rate applies: "readout" (default) keeps the logits' change per step of order
        one, the lookup then learns at the readout's rate; "readin" lets the lookup learn at
        its own rate but the logits' change grows with width (unstable at large width).
    role_overrides: glob pattern on tensor names -> role, applied after inference.
    fan_in_overrides: glob pattern -> fan_in.
    multipliers: per-tensor multipliers, required for gauge="custom", recorded for all gauges.
    wd_scaling: how weight decay scales with width (THEORY.md section 6), a choice of the
        parameterization kept by every gauge change: "coupled" (default: the effective decay is
        the user's wd, its per-step fraction lambda*wd shrinks with lambda) or "independent"
        (the per-step fraction eta*wd is the same for every tensor and width, as in mup).
    module_axes: input/output axes of module types that no built-in rule covers, as plain data
        (saved in config.json, so a reload needs no code): {"ClassName": rule name} or
        {"ClassName": {attr_glob: rule name or [[in axes], [out axes]]}} (hf/module_rules.py).
    width_fields: {"field" or "sub_config.field": "scale" | "fixed"}, for config fields whose
        growth with width role inference cannot decide (hf/width_scaling.py).
    allow_unusual_roles: confirm roles with no readout, no hidden tensor or only fixed tensors,
        which are refused otherwise.
    attention_base_head_dim: the head dimension d0 at which the attention logit scale is the
        architecture's own; at head dimension d it is moved by (d0/d) (hf/attention.py). None:
        from base_width, else the recorded entry's, else the model's own head dimension (its
        function is kept).
    base_width: the width n0 of the sweep's base model (microsoft/mup's set_base_shapes base),
        given once for every width: it fixes every base-relative quantity (hf/base.py; today
        the attention's d0). A transformers config or model may be given for it: its hidden
        size is taken. None: the recorded entry's, else none (a model built from scratch
        without one is warned about).
    form: "plain" (the default: the Parameters hold effective tensors, the forward is the
        model's own, the gauge lives in the optimizer groups) or "materialized" (stored tensors
        w = W/m in the Parameters, m * w on every read); ``gaugeconv.forms``. An entry written
        before forms existed has none and was materialized: it reads as "materialized", so a
        Trainer checkpoint's optimizer.pt is read in the units it was saved in.
    """

    richness: float | None = None
    gauge: str = "mup"
    gamma: float = 1.0
    optimizer: str = "adam"
    width: int | None = None
    tied_role: str = "readout"
    role_overrides: dict[str, str] = field(default_factory=dict)
    fan_in_overrides: dict[str, int] = field(default_factory=dict)
    multipliers: dict[str, float] | None = None
    wd_scaling: str = "coupled"
    module_axes: dict[str, Any] = field(default_factory=dict)
    width_fields: dict[str, str] = field(default_factory=dict)
    allow_unusual_roles: bool = False
    attention_base_head_dim: int | None = None
    base_width: int | None = None
    form: str = PLAIN

    def __post_init__(self) -> None:
        gauge = str(self.gauge).lower()
        if gauge != "custom" and gauge not in GAUGE_NAMES and gauge not in NAMED_POINTS:
            resolve_point(gauge)  # raises UnknownGaugeError with the choices
        if gauge == "custom":
            if not self.multipliers:
                raise GaugeError("gauge='custom' needs multipliers={tensor name: m}")
            r = self.richness
        else:
            _, r = resolve_point(gauge, self.richness)
        if r is None:
            raise GaugeError(f"gauge {self.gauge!r} needs a richness r in [0, 1/2]")
        Richness(r, self.gamma)  # validates r and gamma
        self.richness = float(r)
        self.gauge = gauge
        self.optimizer = Family.parse(self.optimizer).value
        for role in self.role_overrides.values():
            Role.parse(role)
        if Role.parse(self.tied_role) not in (Role.READIN, Role.READOUT):
            raise GaugeError(f"tied_role must be 'readin' or 'readout', not {self.tied_role!r}")
        if self.wd_scaling not in WD_SCALINGS:
            raise GaugeError(f"wd_scaling={self.wd_scaling!r} is not one of {WD_SCALINGS}")
        self.module_axes = check_module_axes(self.module_axes)
        for name, choice in self.width_fields.items():
            if choice not in ("scale", "fixed"):
                raise GaugeError(f"width_fields[{name!r}] = {choice!r}: say 'scale' or 'fixed'")
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise GaugeError(f"width={self.width!r} must be a positive integer")
        check_form(self.form)
        d0 = self.attention_base_head_dim
        if d0 is not None and (not isinstance(d0, int) or isinstance(d0, bool) or d0 < 1):
            raise GaugeError(f"attention_base_head_dim={d0!r} must be a positive integer")
        if self.base_width is not None and not isinstance(self.base_width, (int, float, str)):
            base = getattr(self.base_width, "config", self.base_width)  # a base model or config
            self.base_width = width_of(base)
        n0 = self.base_width
        if n0 is not None and (not isinstance(n0, int) or isinstance(n0, bool) or n0 < 1):
            raise GaugeError(f"base_width={n0!r} must be a positive integer (or a base config)")

    @property
    def gauge_name(self) -> str:
        """The gauge proper (named points resolved): stp, mup, rescaling or custom."""
        if self.gauge == "custom":
            return "custom"
        return resolve_point(self.gauge, self.richness)[0].name

    def replace(self, **changes: Any) -> GaugeConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format_version"] = FORMAT_VERSION
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GaugeConfig:
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        data.setdefault("form", MATERIALIZED)  # entries from before forms were materialized
        if version not in (1, 2):  # 2: the weights beside it are effective (hf/model.py)
            raise GaugeError(f"gauge entry has format_version {version}, this gaugeconv reads 1, 2")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GaugeError(f"unknown gauge config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
