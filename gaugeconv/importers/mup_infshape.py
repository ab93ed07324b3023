"""What microsoft/mup's ``infshape`` says about a tensor: its role and the lr mup gives it.

``mup.set_base_shapes`` marks every parameter with an InfShape: per dimension, whether it is a
width (its base size is recorded) or not. mup's optimizers (mup/optim.py) scale each tensor by
that alone, whatever module holds it:

* MuAdam / MuAdamW (and ``MuAdam(impl=...)``, Adam-like): two width dimensions ("matrix-like")
  lr / width_mult and weight decay * width_mult, where width_mult = n / n0 of the last width
  dimension (the fan-in); one or none ("vector-like") lr and weight decay unchanged.
* MuSGD (and ``MuSGD(impl=...)``): one width dimension lr * width_mult, weight decay
  / width_mult; two: lr / (fan_in_mult / fan_out_mult), weight decay * that ratio; none: unchanged.
* More than two width dimensions: mup raises NotImplementedError; so does this module.

The same infshape gives the role (THEORY.md section 1, "which dimensions grow with width"), for
tensors that no module rule covers (nn.MultiheadAttention-style ``in_proj_weight``, ``bias_k``,
bare position tables):

* two width dimensions: hidden, fan_in = prod(shape[1:]) (mup's fan-in is dimension 1);
* one: vector-like, as mup's optimizers treat it: readin with fan_in 1 (an embedding-like table,
  a bias, a gain: each entry is read, not summed over a width);
* none: fixed.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import GaugeError
from ..richness import Family, Role

__all__ = ["infshape_of", "role_from_infshape", "mup_lr_wd"]


def infshape_of(p: Any, name: str) -> Any:
    """The parameter's mup InfShape; a GaugeError naming it when set_base_shapes was not run."""
    shape = getattr(p, "infshape", None)
    if shape is None:
        raise GaugeError(
            f"parameter {name!r} has no infshape: call mup.set_base_shapes(model, base) first"
        )
    return shape


def _ninf(infshape: Any, name: str) -> int:
    count = int(infshape.ninf())
    if count > 2:
        raise GaugeError(
            f"{name!r} has {count} width dimensions ({infshape!r}); mup's optimizers support at "
            "most 2 (NotImplementedError there)"
        )
    return count


def role_from_infshape(infshape: Any, shape: tuple[int, ...], name: str) -> tuple[Role, int]:
    """(role, fan_in) of a tensor from its width dimensions alone (module docstring)."""
    count = _ninf(infshape, name)
    if count == 2:
        return Role.HIDDEN, int(math.prod(shape[1:]))
    return (Role.READIN if count == 1 else Role.FIXED), 1


def mup_lr_wd(infshape: Any, family: Family, lr: float, weight_decay: float,
              name: str) -> tuple[float, float]:
    """The stored (lr, weight decay) mup's optimizer of ``family`` gives a tensor from base
    values ``lr`` and ``weight_decay`` (mup/optim.py, module docstring)."""
    count = _ninf(infshape, name)
    if family is Family.ADAM:
        if count == 2:
            mult = float(infshape.width_mult())
            return lr / mult, weight_decay * mult
        return lr, weight_decay
    if count == 1:
        mult = float(infshape.width_mult())
        return lr * mult, weight_decay / mult
    if count == 2:
        ratio = float(infshape.fanin_fanout_mult_ratio())
        return lr / ratio, weight_decay * ratio
    return lr, weight_decay
