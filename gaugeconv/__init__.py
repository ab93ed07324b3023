"""gaugeconv: richness-r parameterizations of wide networks and exact conversion between gauges.

See THEORY.md (shipped in the README) for the formulas; every public conversion is exact in the
sense of its section 4 and tested numerically.

The names below are imported on first use (``gaugeconv.convert`` imports torch, the errors and
``Richness`` do not), so that ``import gaugeconv`` and ``gaugeconv --help`` stay light.
"""

from __future__ import annotations

from ._lazy import lazy_attributes, shadow_submodules

__version__ = "0.1.0"

_WHERE = {
    **dict.fromkeys(["ConversionError", "GaugeError", "RichnessError", "RoleError",
                     "UnknownGaugeError", "UnsupportedOptimizerError"], ".errors"),
    **dict.fromkeys(["NAMED_POINTS", "STP", "Custom", "Gauge", "MuP", "Rescaling", "get_gauge",
                     "resolve_point"], ".gauges"),
    **dict.fromkeys(["ReferenceMLP", "build_mlp"], ".mlp"),
    **dict.fromkeys(["GaugedModel", "attach"], ".model"),
    **dict.fromkeys(["DEFAULT_REGISTRY", "OptimizerRegistry", "OptimizerRule"], ".optim_rules"),
    **dict.fromkeys(["Parameterization", "TensorPlan"], ".plan"),
    **dict.fromkeys(["Family", "Richness", "Role", "Target", "target"], ".richness"),
    "TensorSpec": ".spec",
    **dict.fromkeys(["VerifyConfig", "VerifyReport", "verify"], ".verify"),
    "convert": ".convert",
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
shadow_submodules(__name__, _WHERE)  # e.g. gaugeconv.verify: the function, always
