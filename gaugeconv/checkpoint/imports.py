"""The import phase of a conversion, on its own clock.

Building SRC's model on the meta device needs torch, transformers' configuration and auto
classes and SRC's model class: seconds of imports that dwarf the planning itself. The command
line loads them here first, so that its report can give import, planning and writing times
apart (``convert_checkpoint`` would import the same modules lazily, inside its planning).
Nothing here decides anything: an unreadable config.json or an unknown class is skipped, and
convert_checkpoint reports it as usual.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

__all__ = ["preload"]


def preload(src: str | Path) -> float:
    """Import what converting SRC needs; returns the seconds it took."""
    start = time.perf_counter()
    import torch  # noqa: F401
    from transformers.models.auto import configuration_auto, modeling_auto  # noqa: F401

    from ..hf import model  # noqa: F401  (gaugeconv's torch layer: multipliers, roles)
    from ..hf.inspect import model_class_for, read_config
    from . import optimizer_files  # noqa: F401

    try:
        raw = read_config(src)
        model_class_for(SimpleNamespace(model_type=raw.get("model_type"),
                                        architectures=raw.get("architectures")))
    except Exception:  # any problem is convert_checkpoint's to report, in its order
        pass
    return time.perf_counter() - start
