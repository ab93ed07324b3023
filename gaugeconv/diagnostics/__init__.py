"""Richness diagnostics: coordinate check, classifier, lazy-limit check, muTransfer sweeps, plots."""

from .classify import PRESETS, Classification, classify_abc, classify_factory, classify_measured
from .coord_check import CoordCheckConfig, CoordCheckReport, coord_check
from .lazy import LazyConfig, lazy_limit
from .transfer import (
    TransferConfig,
    TransferReport,
    analyse_sweep,
    compare_sweeps,
    lr_sweep,
    mlp_runner,
    transfer_check,
)

__all__ = [
    "PRESETS", "Classification", "classify_abc", "classify_factory", "classify_measured",
    "CoordCheckConfig", "CoordCheckReport", "coord_check", "LazyConfig", "lazy_limit",
    "TransferConfig", "TransferReport", "analyse_sweep", "compare_sweeps", "lr_sweep",
    "mlp_runner", "transfer_check",
]
