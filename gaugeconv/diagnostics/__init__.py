"""Richness diagnostics: coordinate check, classifier, lazy-limit check, muTransfer sweeps, plots.

Names are imported on first use (the classifier needs no torch; the others train models).
"""

from .._lazy import lazy_attributes, shadow_submodules

_WHERE = {
    **dict.fromkeys(["PRESETS", "Classification", "classify_abc", "classify_factory",
                     "classify_measured"], ".classify"),
    **dict.fromkeys(["CoordCheckConfig", "CoordCheckReport", "coord_check"], ".coord_check"),
    **dict.fromkeys(["LazyConfig", "lazy_limit"], ".lazy"),
    **dict.fromkeys(["TransferConfig", "TransferReport", "analyse_sweep", "compare_sweeps",
                     "lr_sweep", "mlp_runner", "transfer_check"], ".transfer"),
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
shadow_submodules(__name__, _WHERE)  # coord_check: the function, always
