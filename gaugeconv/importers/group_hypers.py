"""Per-group optimizer hyperparameters that no gauge moves (betas, momentum, nesterov, amsgrad...).

A gauge change scales a group's lr, eps, weight decay and a few declared keys (THEORY.md section
4, ``OptimizerRule.hyper_powers``); every other key of a group (Adam's betas and amsgrad, SGD's
momentum, dampening and nesterov, maximize, foreach...) is dimensionless and the same in every
gauge. An import reads lr, eps and weight decay per tensor into constants; these other keys are
carried as they are, per tensor, so that a fresh optimizer (``Imported.make_optimizer``) gives
every tensor its source group's values, not the optimizer's defaults.

Refused, naming the key and the tensors, rather than dropped silently:

* a key the rebuilt optimizer class does not take, set to anything but the source class's
  default or the value the rebuilt class sets by itself (``amsgrad=True`` rebuilt as NAdam;
  AdamW's own ``decoupled_weight_decay=True`` passes);
* the flag that picks coupled or decoupled weight decay (torch Adam's ``decoupled_weight_decay``)
  when groups disagree: a fresh optimizer's weight decay is computed for one mode;
* a scaled key other than lr, eps and weight decay (Adagrad's ``initial_accumulator_value``)
  whose value differs from the optimizer's default in some group: it has no per-tensor constant.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import GaugeError
from ..optim_rules import LR_KEYS, OptimizerRule

__all__ = ["group_hypers_of", "fit_to_class", "NOT_CARRIED"]

NOT_CARRIED = ("params", "param_names", "weight_decay", *LR_KEYS)  # read into constants
_MISSING = object()


def group_hypers_of(
    optimizer: torch.optim.Optimizer, names: Mapping[int, str], rule: OptimizerRule
) -> dict[str, dict[str, Any]]:
    """Per stored tensor, the keys of its group that are not read into constants (copies)."""
    skip = {*NOT_CARRIED, *rule.eps_keys}
    out: dict[str, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        values = {k: copy.deepcopy(v) for k, v in group.items() if k not in skip}
        for p in group["params"]:
            out[names[id(p)]] = dict(values)
    return out


def _signature_defaults(cls: type | None) -> dict[str, Any]:
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _own_group_values(cls: type) -> dict[str, Any]:
    """What ``cls`` writes into its groups by itself (AdamW: decoupled_weight_decay=True, a key
    its constructor does not take), read from a throwaway instance; {} if it needs arguments."""
    try:
        return dict(cls([torch.nn.Parameter(torch.zeros(1))]).defaults)
    except Exception:  # an optimizer class that insists on arguments: nothing known
        return {}


def _same(a: Any, b: Any) -> bool:
    return a is b or repr(a) == repr(b)


def _names(tensors: list[str]) -> str:
    return ", ".join(repr(n) for n in tensors[:4]) + (" ..." if len(tensors) > 4 else "")


def fit_to_class(
    cls: type,
    rule: OptimizerRule,
    source_class: type | None,
    hyper: Mapping[str, Any],
    per_tensor: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(constructor keywords, per-tensor group values) for a fresh ``cls`` optimizer.

    ``hyper``: the source's defaults (effective-space lr, eps, weight decay included);
    ``per_tensor``: ``group_hypers_of`` less the keys the caller overrides. Keys ``cls`` does not
    take are dropped where they hold the source class's default, refused otherwise; the weight
    decay mode flag is moved into the keywords (one mode); scaled keys must equal the default.
    """
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    source_defaults = _signature_defaults(source_class)
    own = _own_group_values(cls)

    def dropped(key: str, value: Any) -> bool:
        """A key cls does not take, holding a value that asks for nothing special."""
        return key not in accepted and (_same(source_defaults.get(key, _MISSING), value)
                                        or _same(own.get(key, _MISSING), value))

    def refuse(key: str, value: Any, where: str) -> None:
        raise GaugeError(
            f"{cls.__name__} takes no {key!r}, which the source optimizer sets to {value!r} "
            f"({where}): rebuild with a class that takes it, or use imported.optimizer"
        )

    kwargs: dict[str, Any] = {}
    for key, value in hyper.items():
        if key not in accepted and not dropped(key, value):
            refuse(key, value, "in its defaults")
        if key in accepted:
            kwargs[key] = value
    out = {name: {k: v for k, v in values.items() if k in accepted}
           for name, values in per_tensor.items()}
    for key in sorted({k for values in per_tensor.values() for k in values} - accepted):
        odd = [n for n, values in per_tensor.items()
               if key in values and not dropped(key, values[key])]
        if odd:
            refuse(key, per_tensor[odd[0]][key], f"groups of {_names(odd)}")
    flag = rule.weight_decay if rule.weight_decay not in ("coupled", "decoupled") else None
    powers = rule.hyper_powers(kwargs)
    for key in sorted({k for values in out.values() for k in values}):
        holders = [n for n, values in out.items() if key in values]
        if key == flag:
            seen = {repr(out[n][key]): out[n][key] for n in holders}
            if len(seen) > 1:
                on = [n for n in holders if out[n][key]]
                raise GaugeError(
                    f"the source groups disagree on {key!r} ({_names(on)} set it): a fresh "
                    "optimizer computes weight decay for one mode; use imported.optimizer"
                )
            kwargs[key] = next(iter(seen.values()))
        elif key in powers:
            default = kwargs.get(key, _signature_defaults(cls).get(key))
            odd = [n for n in holders if not _same(out[n][key], default)]
            if odd:
                raise GaugeError(
                    f"{key!r} is scaled by the gauge and differs from the default {default!r} in "
                    f"the groups of {_names(odd)}: it has no per-tensor constant; use "
                    "imported.optimizer"
                )
        else:
            continue
        for n in holders:
            del out[n][key]
    return kwargs, out
