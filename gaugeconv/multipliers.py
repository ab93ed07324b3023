"""Forward multipliers that apply on every read: ``module.weight`` *is* m * w.

Each module that has a multiplier other than 1 gets its class swapped for a subclass made for
that instance (what ``torch.nn.utils.parametrize`` does internally), whose class-level properties
return ``self._parameters[name] * m`` (THEORY.md section 1: W = m * w). The stored Parameter stays
in ``_parameters`` under its own name, so state-dict keys, ``named_parameters``, the optimizer's
``param_names`` and ``nn.Module.__setattr__`` are unchanged and ``isinstance`` still holds;
``forward`` is not touched. Because the product is formed on every attribute read,
it reaches code that reads a weight outside its module's call (Mamba's ``dt_proj.weight``,
MobileBERT's ``decoder.weight.t()``), a compiled graph (dynamo traces the property and guards on
m), and there is no slot to restore after an exception. Gradients reach w through the product:
the stored gradient is m times the effective one (section 4).

The state dict holds effective tensors (``_save_to_state_dict`` emits m*w, detached) and
``load_state_dict`` unfolds what it is given (``unfold``: W/m with the forward's product hitting
W bit for bit), so a gauged model's state dict is a plain model's state dict of the same
function: a plain ``load_state_dict`` or ``from_pretrained`` gets the same function, and loading
back into the gauge gives the same forward bit for bit (the stored w itself equal to the saved
one for power-of-two m, within one ulp otherwise).

Code that needs the Parameter object from ``getattr`` gets the product instead: FSDP2's sharded
parameters are given back raw once registered (``mark_fsdp_sharded``); accelerate's hooks are
refused (``_old_forward`` below); ``nn.Module.get_parameter`` raises AttributeError.

Writes: ``module.weight`` is a new tensor on every read, so an in-place write into it
(``module.weight.copy_(x)``, ``.normal_()``) cannot reach the stored tensor. Read with
gradients off (where such writes happen: init code) it is an inference tensor, which refuses
in-place writes with a RuntimeError instead of losing them silently; write through
``module._parameters[name]`` (stored units) or ``load_state_dict`` (effective units). Writes
through ``.data`` (``module.weight.data += d``), and any write under autograd, are not caught
and are lost: the unguarded case (README, "How multipliers reach the computation").

One registration per use: a tensor shared by two modules (tied embeddings) can carry a multiplier
per module. A module reached by two paths (a block registered twice) is gauged once. Modules
whose multipliers are all 1 (the STP gauge) keep their own class: STP costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import GaugeError
from .tensor_ops import is_power_of_two

__all__ = [
    "Multipliers", "GaugedModuleMixin", "multipliers_of", "is_gauged_module", "unfold", "M_ATTR",
    "mark_fsdp_sharded", "check_unfold",
]

M_ATTR = "_gaugeconv_m"  # per-instance dict: attribute name -> multiplier
SHARDED_ATTR = "_gaugeconv_fsdp"  # per-instance dict: attribute name -> FSDP2's sharded Parameter
CARRY_ATTR = "_gaugeconv_carry"  # per-instance dict: attribute name -> attributes to carry over
_CARRIED = ("infshape",)  # attributes of a stored Parameter that modules read (microsoft/mup)

_BASE_ATTR = "_gaugeconv_base"  # on a gauged class: the class it was made from

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support

    class DTensor:  # type: ignore[no-redef]
        pass


@torch.no_grad()
def unfold(effective: torch.Tensor, m: float, name: str | None = None) -> torch.Tensor:
    """The stored tensor w whose forward product ``w * m`` is ``effective`` bit for bit.

    w = W / m, then entries whose product misses W by rounding move one ulp (torch's scalar
    division may multiply by 1/m). Every W that some forward produced (W = fl(w0 * m)) is hit
    exactly, so a state dict saved from a gauged model and loaded back into the gauge gives the
    same function bit for bit; the stored tensor itself may differ from w0 in its last bit when
    m is not a power of two (for powers of two w = w0 exactly). With ``name``, entries that
    W/m loses are refused first (``check_unfold``).
    """
    w = effective / m
    if not w.is_floating_point() or w.is_meta:
        return w
    if name is not None:
        _refuse_lost(effective, w, m, name)
    if is_power_of_two(m):
        return w
    miss = (w * m) != effective
    if bool(miss.any()):
        for direction in (math.inf, -math.inf):
            step = torch.nextafter(w, torch.full_like(w, direction))
            w = torch.where(miss & ((step * m) == effective), step, w)
            miss = (w * m) != effective
    return w


def _refuse_lost(effective: torch.Tensor, w: torch.Tensor, m: float, name: str) -> None:
    lost = torch.isfinite(effective) & (effective != 0) & ((w == 0) | ~torch.isfinite(w))
    count = int(lost.sum())
    if count:
        raise GaugeError(
            f"{name}: {count} entr{'y' if count == 1 else 'ies'} of the effective tensor "
            f"underflow or overflow in {effective.dtype} when stored with multiplier {m!r} "
            "(w = W/m); choose a gauge with smaller multipliers (STP stores W itself) or a wider "
            "dtype"
        )


@torch.no_grad()
def check_unfold(effective: torch.Tensor, m: float, name: str) -> None:
    """Refuse an effective tensor whose stored form W / m leaves the dtype's range.

    A finite nonzero W whose w = W/m becomes 0 or inf would compute another function in the
    gauge (an extreme gamma, a float16 model): a GaugeError naming the tensor. For a pass that
    must refuse before anything changes; ``unfold(..., name=)`` checks as it goes.
    """
    if effective.is_floating_point() and not effective.is_meta:
        _refuse_lost(effective, effective / m, m, name)


def _property(name: str) -> property:
    def fget(self: nn.Module) -> Any:
        p = self._parameters.get(name)
        if p is None:
            if name in self._parameters:
                return None
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        m = self._gaugeconv_m.get(name)
        if m is None:
            return p
        if isinstance(p, DTensor):
            return _sharded(self, name, p)
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or \
                torch.is_inference_mode_enabled():
            effective = p * m
        else:  # a write into it would be lost: make it an inference tensor, which refuses writes
            with torch.inference_mode():
                effective = p * m
        carried = self.__dict__.get(CARRY_ATTR)
        if carried and name in carried:  # attributes other code reads (mup's infshape)
            for key, value in carried[name].items():
                setattr(effective, key, value)
        return effective

    def fset(self: nn.Module, value: Any) -> None:
        # nn.Module.__setattr__ handles Parameters and None itself; anything else lands here
        raise TypeError(
            f"cannot assign {type(value).__name__} to {name!r} of {type(self).__name__}: it is a "
            "gauged parameter (assign an nn.Parameter, or write into the stored tensor through "
            "module._parameters[name])"
        )

    return property(fget, fset, doc=f"effective {name}: stored Parameter times its multiplier")


def _sharded(module: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    """A DTensor in the slot: FSDP2's sharded Parameter, read by FSDP2's own bookkeeping.

    FSDP2 (``fully_shard``) computes with plain unsharded Parameters, which get the multiplier;
    between calls the slot holds the sharded DTensor, and FSDP2 re-reads it with getattr and
    must get that very Parameter back. Only Parameters registered by ``mark_fsdp_sharded`` are
    given back raw; any other DTensor (tensor parallelism computes with DTensor weights) is
    refused rather than used without its multiplier.
    """
    if module.__dict__.get(SHARDED_ATTR, {}).get(name) is p:
        return p
    raise GaugeError(
        f"{type(module).__name__}.{name} is a DTensor that gaugeconv does not know: FSDP2 "
        "(fully_shard) needs gaugeconv.multipliers.mark_fsdp_sharded(model) after sharding "
        "(the gauge's optimizer factory does it), and tensor parallelism is not supported"
    )


def mark_fsdp_sharded(model: nn.Module) -> int:
    """Register the sharded Parameters of FSDP2 (``fully_shard``) modules; returns their count.

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
        for module in root.modules():
            if not isinstance(module, GaugedModuleMixin):
                continue
            sharded = {n: p for n, p in module._parameters.items() if isinstance(p, DTensor)}
            module.__dict__[SHARDED_ATTR] = sharded
            count += len(sharded)
    return count


class GaugedModuleMixin:
    """Mixed into every gauged module's class: the state dict holds effective tensors."""

    _gaugeconv_m: dict[str, float]

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, m in self._gaugeconv_m.items():
            key = prefix + name
            p = self._parameters.get(name)
            if key in destination and p is not None:
                destination[key] = p.detach() * m

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any):
        if self._gaugeconv_m:
            state_dict = dict(state_dict)
            for name, m in self._gaugeconv_m.items():
                value = state_dict.get(prefix + name)
                if isinstance(value, torch.Tensor):
                    state_dict[prefix + name] = unfold(value, m, prefix + name)
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_ACCELERATE = (
    "accelerate hooks (cpu_offload, dispatch_model, from_pretrained(device_map=...)) on a gauged "
    "module: accelerate offload reads parameters through getattr (effective tensors) and "
    "writes them into the stored slots, which would apply the multipliers twice. For inference "
    "the gauge does not matter: gh.convert_gauge(model, 'stp') first, or load the saved folder "
    "(it holds effective tensors) with plain transformers"
)


def _refuse_accelerate(self: nn.Module, value: Any) -> None:
    raise GaugeError(f"{type(self).__name__}: {_ACCELERATE}")


def _absent(self: nn.Module) -> Any:
    raise AttributeError("_old_forward")


# accelerate's add_hook_to_module sets module._old_forward before it touches any tensor: refusing
# that assignment leaves the model as it was
_ACCELERATE_GUARD = property(_absent, _refuse_accelerate)


def _gauged_class(base: type, names: tuple[str, ...]) -> type:
    namespace: dict[str, Any] = {name: _property(name) for name in names}
    namespace["_old_forward"] = _ACCELERATE_GUARD
    namespace[_BASE_ATTR] = base
    namespace["__module__"] = base.__module__
    return type(f"Gauged{base.__name__}", (GaugedModuleMixin, base), namespace)


def is_gauged_module(module: nn.Module) -> bool:
    return isinstance(module, GaugedModuleMixin)


def multipliers_of(module: nn.Module) -> dict[str, float]:
    """The multipliers a module applies (empty for a module that is not gauged)."""
    return dict(module.__dict__.get(M_ATTR, {}))


def _check_module(module: nn.Module, path: str) -> None:
    """Refuse a module that cannot carry multipliers (checked before anything changes)."""
    if "_hf_hook" in module.__dict__ or "_old_forward" in module.__dict__:
        raise GaugeError(f"{path or 'model'} ({type(module).__name__}) carries {_ACCELERATE}")
    if isinstance(module, GaugedModuleMixin):
        return
    for name in module._parameters:
        for klass in type(module).__mro__:
            if name in klass.__dict__:
                raise GaugeError(
                    f"{path or 'model'} ({type(module).__name__}) defines {name!r} as a class "
                    f"attribute of {klass.__name__} (a parametrization or property); "
                    "gaugeconv cannot put a multiplier on it"
                )


def _gauge_module(module: nn.Module, attrs: dict[str, float]) -> None:
    if not isinstance(module, GaugedModuleMixin):
        # the instance's own class, so that removing the gauge gives it back
        module.__dict__[M_ATTR] = {}
        module.__class__ = _gauged_class(type(module), tuple(module._parameters))
    module.__dict__[M_ATTR] = dict(attrs)
    carried = {}
    for name in attrs:
        found = {k: getattr(module._parameters[name], k) for k in _CARRIED
                 if hasattr(module._parameters[name], k)}
        if found:
            carried[name] = found
    module.__dict__[CARRY_ATTR] = carried


def _ungauge_module(module: nn.Module) -> None:
    if not isinstance(module, GaugedModuleMixin):
        return
    module.__dict__[M_ATTR] = {}
    cls = type(module)
    if _BASE_ATTR in cls.__dict__:  # our class on top (not wrapped again, e.g. by FSDP2)
        module.__class__ = cls.__dict__[_BASE_ATTR]
        del module.__dict__[M_ATTR]
        module.__dict__.pop(CARRY_ATTR, None)


class Multipliers:
    """Keeps the multiplier of every use on the modules of ``model``.

    multipliers are keyed by parameter path ("layers.0.weight"), one entry per use.
    """

    def __init__(self, model: nn.Module, multipliers: Mapping[str, float]) -> None:
        self.model = model
        self._modules: dict[int, nn.Module] = {}
        self.multipliers: dict[str, float] = {}
        self.set(multipliers)

    def set(self, multipliers: Mapping[str, float]) -> None:
        """Replace all multipliers; modules whose multipliers are all 1 keep their own class."""
        per_module: dict[int, tuple[nn.Module, str, dict[str, float]]] = {}
        for path, m in multipliers.items():
            module_path, _, attr = path.rpartition(".")
            module = self.model.get_submodule(module_path)
            if not isinstance(module._parameters.get(attr), nn.Parameter):
                raise GaugeError(f"{module_path or 'model'} has no parameter {attr!r}")
            _, first_path, attrs = per_module.setdefault(id(module), (module, module_path, {}))
            m = float(m)
            if m == 1.0:
                continue
            if attrs.get(attr, m) != m:
                raise GaugeError(
                    f"{module_path}.{attr} is the module {first_path}.{attr} registered twice, "
                    f"with two multipliers ({attrs[attr]} and {m}): a module reached by two "
                    "paths can carry one multiplier per attribute"
                )
            attrs[attr] = m
        wanted = {key: entry for key, entry in per_module.items() if entry[2]}
        for module, path, _ in wanted.values():
            _check_module(module, path)
        for key, module in self._modules.items():
            if key not in wanted:
                _ungauge_module(module)
        for module, _, attrs in wanted.values():
            _gauge_module(module, attrs)
        self._modules = {key: entry[0] for key, entry in wanted.items()}
        self.multipliers = {k: float(v) for k, v in multipliers.items()}

    def remove(self) -> None:
        """Give every module its own class back (it then computes with its stored tensors)."""
        for module in self._modules.values():
            _ungauge_module(module)
        self._modules = {}

    @property
    def active(self) -> int:
        """Number of modules carrying multipliers other than 1."""
        return len(self._modules)
