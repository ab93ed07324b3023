"""The materialized form of a gauged model: stored tensors w in the Parameters, m * w on reads.

The plain form (the default, ``gaugeconv.forms``) keeps effective tensors in the Parameters and
needs none of this; the materialized form is for trajectory proofs between gauges, stored-tensor
checkpoints and code written against microsoft/mup. ``gauged_class`` makes the per-instance
classes, ``effective_tensor`` what their reads return, ``scaled_forward`` the memory-neutral
forwards, ``registry`` swaps classes in and out, ``fsdp`` registers FSDP2's parameters, ``unfold``
turns effective tensors into stored ones.
"""

from .effective_tensor import EffectiveTensor, effective_tensor
from .fsdp import register_fsdp
from .gauged_class import GaugedModuleMixin, stored_tensor
from .registry import Multipliers, is_gauged_module, multipliers_of, owns
from .unfold import check_unfold, unfold

__all__ = [
    "EffectiveTensor", "effective_tensor", "register_fsdp", "GaugedModuleMixin", "stored_tensor",
    "Multipliers", "is_gauged_module", "multipliers_of", "owns", "check_unfold", "unfold",
]
