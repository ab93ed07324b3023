"""Side-by-side training of two gauged models and the verdict: are they the same run?

``engine`` trains and compares, ``tolerance`` says how close is close enough per dtype,
``controls`` breaks one rule on purpose (negative controls), ``report`` holds and prints the
result, ``plot`` draws it. Front doors: ``gaugeconv.verify_folders`` (saved folders, the CLI)
and ``gaugeconv.testing`` (assertions for a user's own test suite).
"""

from .engine import Side, compare_function, rel_diff, run_side_by_side
from .report import EquivalenceReport, format_report, format_table
from .tolerance import default_tolerance, noise_threshold, unit_roundoff

__all__ = ["Side", "compare_function", "rel_diff", "run_side_by_side", "EquivalenceReport",
           "format_report", "format_table", "default_tolerance", "noise_threshold",
           "unit_roundoff"]
