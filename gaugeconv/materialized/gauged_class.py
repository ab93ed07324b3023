"""The class a module gets in a materialized gauge: ``module.weight`` gives m * w on every read.

Each module that carries a multiplier other than 1 gets its class swapped for a subclass made
for that instance (what ``torch.nn.utils.parametrize`` does internally), whose class-level
properties return m * w (THEORY.md section 1: W = m * w). The stored Parameter stays in
``_parameters`` under its own name, so state-dict keys, ``named_parameters``, the optimizer's
``param_names`` and ``isinstance`` are unchanged; ``forward`` is the base class's, except for
Linear, Conv1D, Embedding and ConvNd, whose forward scales the activations instead of the weight
(``scaled_forward``: nothing weight-sized is saved for backward).

What the class guards, so that third-party code is right or loud:

* reads: in eager mode ``module.weight`` is an ``EffectiveTensor`` (writes, flags and hooks
  reach the Parameter in effective units); under ``torch.compile``/export/jit tracing a plain
  product; under ``torch.fx`` symbolic tracing a GaugeError (the product would be baked in as a
  constant);
* ownership: the slot must hold the Parameter the gauge was applied to (or FSDP2's sharded and
  unsharded versions of it, registered by ``fsdp.register_fsdp``). Anything else put into the
  slot directly (``torch.func.functional_call``, accelerate's ``set_module_tensor_to_device``)
  is in unknown units and refused at the next read, naming the tensor;
* assignment: ``module.weight = nn.Parameter(...)`` (also transformers' ``tie_weights``) is a
  GaugeError: the slot holds stored units, the value is in effective ones; so is removing the
  tensor (``del module.weight``, torch's parametrizations: they would keep m * w, read once, as
  untrained buffers);
* the state dict holds effective tensors (write-through, pickled as plain tensors) and
  ``load_state_dict`` unfolds what it is given;
* accelerate's hooks (offload, dispatch) are refused before they touch a tensor;
* pickling (``torch.save(model)``, ``copy.deepcopy``) records the base class and the gauged
  names, and unpickling makes the per-instance class again (a class made at run time cannot be
  found by name).
"""

from __future__ import annotations

import copyreg
from typing import Any

import torch
from torch import nn

from ..errors import GaugeError
from .effective_tensor import EffectiveTensor, effective_tensor
from .scaled_forward import scaled_forward_for
from .unfold import unfold

__all__ = [
    "GaugedModuleMixin", "gauged_class", "stored_tensor", "M_ATTR", "OWNED_ATTR", "PATH_ATTR",
    "FSDP_ATTR", "BASE_ATTR", "CARRY_ATTR", "ACCELERATE",
]

M_ATTR = "_gaugeconv_m"  # per instance: attribute name -> multiplier
OWNED_ATTR = "_gaugeconv_owned"  # per instance: attribute name -> the stored Parameter
PATH_ATTR = "_gaugeconv_path"  # per instance: the module's path in the model (for messages)
FSDP_ATTR = "_gaugeconv_fsdp"  # per instance: attribute name -> FSDP2's FSDPParam
CARRY_ATTR = "_gaugeconv_carry"  # per instance: attribute name -> attributes to carry over
LOADING_ATTR = "_gaugeconv_loading"  # set while our own load_state_dict(assign=True) runs
BASE_ATTR = "_gaugeconv_base"  # on a gauged class: the class it was made from
NAMES_ATTR = "_gaugeconv_names"  # on a gauged class: the names its properties cover

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support

    class DTensor:  # type: ignore[no-redef]
        pass


def _label(module: nn.Module, name: str) -> str:
    path = module.__dict__.get(PATH_ATTR, "")
    return f"{path}.{name}" if path else name


def _fsdp_owns(module: nn.Module, name: str, p: torch.Tensor) -> bool:
    fsdp_param = module.__dict__.get(FSDP_ATTR, {}).get(name)
    if fsdp_param is None:
        return False
    return p is fsdp_param.sharded_param or p is getattr(fsdp_param, "_unsharded_param", None)


def stored_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor in ``module``'s slot ``name``, if the gauge put it there.

    A tensor put into the slot behind the gauge's back (``torch.func.functional_call``, a direct
    ``module._parameters[name] = ...``) is in units nobody can tell: refused by name.
    """
    p = module._parameters.get(name)
    if name not in module.__dict__.get(M_ATTR, {}) or torch.compiler.is_compiling():
        return module._parameters[name] if p is None else p
    if p is None:
        raise GaugeError(
            f"{_label(module, name)}: the tensor of a materialized gauge was removed from its "
            "module (del module._parameters[...], torch.nn.utils.weight_norm's old hook API); "
            "remove or reparametrize tensors in the plain form (gh.to_plain)"
        )
    if p is module.__dict__[OWNED_ATTR].get(name) or _fsdp_owns(module, name, p):
        return p
    raise GaugeError(
        f"{_label(module, name)}: the slot holds a tensor that gaugeconv did not put there "
        "(torch.func.functional_call, accelerate's loading, a direct _parameters write): in a "
        "materialized gauge the slot holds the stored tensor w = W/m, and a tensor in other "
        "units would be multiplied again. Use the plain form (gh.to_plain / "
        "GaugedModel.to_plain), where module.weight is the Parameter, or load effective tensors "
        "with load_state_dict"
    )


def _is_fx_tracing() -> bool:
    from torch.fx import _symbolic_trace

    check = getattr(_symbolic_trace, "is_fx_symbolic_tracing", None)  # torch >= 2.8
    return bool(check()) if check is not None else _symbolic_trace.is_fx_tracing()


def _property(name: str) -> property:
    def fget(self: nn.Module) -> Any:
        p = self._parameters.get(name)
        if p is None:
            if name in self._parameters:
                return None
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        m = self.__dict__[M_ATTR].get(name)
        if m is None:
            return p
        if isinstance(p, DTensor):
            return _sharded(self, name, p)
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return p * m
        if _is_fx_tracing():
            raise GaugeError(
                f"{_label(self, name)}: torch.fx symbolic tracing of a materialized gauge would "
                "bake m * w into the graph as a constant; trace the plain form, or use "
                "torch.export"
            )
        effective = effective_tensor(stored_tensor(self, name), m, _label(self, name))
        carried = self.__dict__.get(CARRY_ATTR)
        if carried and name in carried:  # attributes other code reads (mup's infshape)
            for key, value in carried[name].items():
                setattr(effective, key, value)
        return effective

    def fset(self: nn.Module, value: Any) -> None:
        # nn.Module.__setattr__ handles Parameters and None itself; anything else lands here
        raise GaugeError(
            f"cannot assign {type(value).__name__} to {_label(self, name)}: it is a tensor of a "
            "materialized gauge (its slot holds w = W/m); assign in the plain form, or write "
            "effective values in place (module.weight.copy_(W)) or with load_state_dict"
        )

    return property(fget, fset, doc=f"effective {name}: stored Parameter times its multiplier")


def _sharded(module: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    """A DTensor in the slot: FSDP2's sharded Parameter, read by FSDP2's own bookkeeping.

    FSDP2 (``fully_shard``) computes with plain unsharded Parameters, which get the multiplier;
    between calls the slot holds the sharded DTensor, and FSDP2 re-reads it with getattr and
    must get that very Parameter back. Only Parameters registered by ``register_fsdp`` are
    given back raw; any other DTensor (tensor parallelism computes with DTensor weights) is
    refused rather than used without its multiplier.
    """
    if _fsdp_owns(module, name, p):
        return p
    raise GaugeError(
        f"{_label(module, name)} is a DTensor that gaugeconv does not know: FSDP2 (fully_shard) "
        "needs gaugeconv.multipliers.mark_fsdp_sharded(model) after sharding (the gauge's "
        "optimizer factory does it), and tensor parallelism is not supported in a materialized "
        "gauge (the plain form has no such restriction)"
    )


class GaugedModuleMixin:
    """Mixed into every gauged module's class: effective state dicts, guarded assignment."""

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        for name, m in self.__dict__[M_ATTR].items():
            key = prefix + name
            p = self._parameters.get(name)  # type: ignore[attr-defined]
            if key not in destination or p is None:
                continue
            if isinstance(p, DTensor) or torch.compiler.is_compiling():
                destination[key] = p.detach() * m
            elif keep_vars:
                destination[key] = getattr(self, name)
            else:
                destination[key] = effective_tensor(stored_tensor(self, name), m,  # type: ignore
                                                    _label(self, name), detached=True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any):
        multipliers = self.__dict__[M_ATTR]
        if multipliers:
            state_dict = dict(state_dict)
            for name, m in multipliers.items():
                value = state_dict.get(prefix + name)
                if isinstance(value, torch.Tensor):
                    state_dict[prefix + name] = unfold(value, m, prefix + name)
        self.__dict__[LOADING_ATTR] = True
        try:
            return super()._load_from_state_dict(state_dict, prefix, *args,  # type: ignore[misc]
                                                 **kwargs)
        finally:
            del self.__dict__[LOADING_ATTR]
            owned = self.__dict__[OWNED_ATTR]
            for name in multipliers:  # load_state_dict(assign=True) put new Parameters there
                p = self._parameters.get(name)  # type: ignore[attr-defined]
                if isinstance(p, nn.Parameter) and p is not owned.get(name) and \
                        not _fsdp_owns(self, name, p):  # type: ignore[arg-type]
                    owned[name] = p

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        if _is_read_of_slot(self, name, param):
            return  # re-tying a slot to what it holds (transformers' tie_weights): nothing to do
        if param is not None and name in self.__dict__.get(M_ATTR, {}) and \
                not self.__dict__.get(LOADING_ATTR):
            raise GaugeError(
                f"{_label(self, name)}: assigning a Parameter to a tensor of a materialized gauge "  # type: ignore[arg-type]
                "(its slot holds w = W/m, the Parameter would be read as stored units and "
                "multiplied again; transformers' tie_weights and resize_token_embeddings assign "
                "Parameters too). Do it in the plain form (gh.to_plain, then gh.materialize), or "
                "write effective values in place: module.weight.copy_(W)"
            )
        super().register_parameter(name, param)  # type: ignore[misc]

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get(M_ATTR, {}) and name in self._parameters:  # type: ignore
            raise GaugeError(
                f"{_label(self, name)}: removing a tensor of a materialized gauge from its module "  # type: ignore[arg-type]
                "(torch.nn.utils.parametrize: weight_norm, spectral_norm, orthogonal; del "
                "module.weight). A parametrization would take m * w as read once and register "
                "what it derives as buffers (the read is not an nn.Parameter): untrained, "
                "silently. Parametrize in the plain form (gh.to_plain / GaugedModel.to_plain)"
            )
        super().__delattr__(name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        reduced = super().__reduce_ex__(protocol)  # type: ignore[misc]
        cls = type(self)
        if BASE_ATTR not in cls.__dict__ or not isinstance(reduced, tuple) or \
                reduced[0] is not copyreg.__newobj__:
            return reduced  # another class on top of ours (FSDP2): its own reduction
        return (_new_gauged, (cls.__dict__[BASE_ATTR], cls.__dict__[NAMES_ATTR]), *reduced[2:])

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        m = ", ".join(f"m_{k}={v:.4g}" for k, v in self.__dict__[M_ATTR].items())
        return f"{base}, {m}" if base and m else base or m


ACCELERATE = (
    "accelerate hooks (cpu_offload, dispatch_model, from_pretrained(device_map=...)) on a "
    "materialized gauge: accelerate offload reads parameters through getattr (effective "
    "tensors) and writes them into the stored slots, which would apply the multipliers twice. "
    "Use the plain form (gh.to_plain(model)), where offload works as on a plain model, or load "
    "the saved folder (it holds effective tensors) with plain transformers"
)


def _refuse_accelerate(self: nn.Module, value: Any) -> None:
    raise GaugeError(f"{type(self).__name__}: {ACCELERATE}")


def _absent(self: nn.Module) -> Any:
    raise AttributeError("_old_forward")


# accelerate's add_hook_to_module sets module._old_forward before it touches any tensor: refusing
# that assignment leaves the model as it was
_ACCELERATE_GUARD = property(_absent, _refuse_accelerate)


def gauged_class(base: type, names: tuple[str, ...]) -> type:
    """The per-instance subclass of ``base`` whose properties ``names`` give m * w."""
    namespace: dict[str, Any] = {name: _property(name) for name in names}
    namespace["_old_forward"] = _ACCELERATE_GUARD
    namespace[BASE_ATTR] = base
    namespace[NAMES_ATTR] = tuple(names)
    namespace["__module__"] = base.__module__
    forward = scaled_forward_for(base)
    if forward is not None:
        namespace["forward"] = forward
    return type(f"Gauged{base.__name__}", (GaugedModuleMixin, base), namespace)


def _new_gauged(base: type, names: tuple[str, ...]) -> nn.Module:
    """An empty instance of a gauged class made anew (unpickling; the state follows)."""
    cls = gauged_class(base, names)
    return cls.__new__(cls)


def _is_read_of_slot(module: nn.Module, name: str, param: Any) -> bool:
    """Whether ``param`` is a live read of the very Parameter in ``module``'s slot, at its
    multiplier (``lm_head.weight = wte.weight`` where the two are tied already)."""
    if not isinstance(param, EffectiveTensor):
        return False
    d = param.__dict__
    return (d.get("_gc_kind") == "value" and not d.get("_gc_path") and not d.get("_gc_detached")
            and d.get("_gc_param") is module._parameters.get(name)
            and d.get("_gc_m") == module.__dict__.get(M_ATTR, {}).get(name))


def _refuse_registering_a_read(module: nn.Module, name: str, param: Any) -> None:
    """A global parameter-registration hook: a read of a materialized gauge's tensor (m * w, an
    EffectiveTensor that passes for an nn.Parameter) is not the stored Parameter, so it cannot
    become another module's Parameter (``head.weight = gauged.weight``, ``nn.Parameter(read)``)."""
    if isinstance(param, EffectiveTensor):
        raise GaugeError(
            f"{param.__dict__.get('_gc_name', '?')}: registering a read of a materialized "
            f"gauge's tensor (m * w) as parameter {name!r} of {type(module).__name__}: it is not "
            "the stored Parameter, so it would neither be tied nor be trained as one. Tie in the "
            "plain form (gh.to_plain), or register a copy: nn.Parameter(w.detach().clone())"
        )


torch.nn.modules.module.register_module_parameter_registration_hook(_refuse_registering_a_read)
