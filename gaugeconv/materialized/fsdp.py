"""FSDP2 (``fully_shard``) on a materialized gauge: its Parameters are the gauge's own.

FSDP2 swaps a module's Parameters behind ``getattr``: between calls the slot holds the sharded
DTensor, during the forward the unsharded Parameter (``FSDPParam._unsharded_param``, created at
the first all-gather). Both stand for the stored tensor the gauge was applied to, so the slots'
ownership check (``gauged_class.stored_tensor``) accepts them once the FSDPParam objects are
registered here, and the properties give the sharded DTensor back raw (FSDP2's own bookkeeping
reads it). The plain form needs none of this.
"""

from __future__ import annotations

from torch import nn

from .gauged_class import FSDP_ATTR, GaugedModuleMixin

__all__ = ["register_fsdp"]


def _fsdp_params(root: nn.Module) -> list:
    state = getattr(root, "_get_fsdp_state", None)
    group = getattr(state(), "_fsdp_param_group", None) if state is not None else None
    return list(getattr(group, "fsdp_params", None) or ())


def register_fsdp(model: nn.Module) -> int:
    """Register FSDP2's parameters of every ``fully_shard``-ed module; returns their count.

    Only modules inside a ``fully_shard``-ed module are looked at, so DTensors of tensor
    parallelism are never registered (they stay refused).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return 0
    count = 0
    for root in model.modules():
        if not isinstance(root, FSDPModule):
            continue
        for fsdp_param in _fsdp_params(root):
            info = fsdp_param._module_info
            pairs = [(info.module, info.param_name),
                     *zip(info.shared_modules, info.shared_param_names)]
            for module, name in pairs:
                if isinstance(module, GaugedModuleMixin):
                    module.__dict__.setdefault(FSDP_ATTR, {})[name] = fsdp_param
                    count += 1
    return count
