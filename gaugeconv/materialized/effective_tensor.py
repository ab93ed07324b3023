"""What ``module.weight`` returns in a materialized gauge (eager mode): W = m * w, write-through.

In the materialized form the Parameter holds the stored tensor w and the module computes with
W = m * w (THEORY.md section 1). A plain tensor W would silently lose what third-party code does
to "the weight": an in-place write (``nn.init.zeros_(model.lm_head.weight)``, HF's
``module.weight.data.normal_()``, peft's ``weight.data += delta``, an EMA's ``copy_`` into
state-dict values) would land in a temporary; ``weight.requires_grad = True`` or
``weight.register_hook(fn)`` would mark a tensor that takes no part in the forward.

An ``EffectiveTensor`` computes exactly like W (every out-of-place op sees the product and
returns plain tensors) and forwards to the stored Parameter, in effective units, what a plain
model's Parameter would take:

* in-place ops (methods ending in ``_``, ``__setitem__``, augmented assignment, ``out=``,
  ``torch._foreach_*_``) and ``.data = x``: the op runs on a fresh copy of W, reached through
  the same chain of views that produced this tensor (``weight[3]``, ``weight.data.t()``...), and
  w' = unfold(W', m) is written into the Parameter, so the forward's product m * w' is W' bit
  for bit (THEORY.md section 4). Under autograd a write into a leaf that requires grad raises
  torch's own error, as on a plain model;
* ``requires_grad`` / ``requires_grad_()``, ``register_hook`` (the hook sees and returns
  effective gradients dL/dW = (dL/dw) / m), ``.grad`` (the effective gradient, itself
  write-through to the stored one), ``is_leaf``, ``grad_fn``: those of the Parameter;
* Python attributes: those of the Parameter (transformers' ``_is_hf_initialized``, which its
  init functions read to skip loaded weights; mup's ``infshape``), read and set through it;
* ``isinstance(module.weight, nn.Parameter)`` is True (torch's ``_is_param`` flag for tensor
  subclasses), as on a plain model: ``nn.Module.get_parameter`` and with it transformers'
  ``tie_weights`` take the read. Registering it into a module is refused (``gauged_class``),
  except re-tying a slot to the Parameter it already holds;
* pickling and ``copy.deepcopy`` give plain tensors of the effective values.

Each read is a tensor of its own (on a plain model, one Parameter), kept live: an op on it
first re-reads the Parameter if the Parameter changed since (its version counter moved: a write
through another read of the same tensor, a tied use, an optimizer step), so a held
``state_dict()`` value or a second read of a tied weight sees what a plain model's alias would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .unfold import unfold

__all__ = ["EffectiveTensor", "effective_tensor"]

_GETSET = type(torch.Tensor.data)
_NO_TF = torch._C.DisableTorchFunctionSubclass

# ops whose result is a view of their first argument: writes through it reach the Parameter
_VIEWS = frozenset({
    "__getitem__", "view", "view_as", "reshape", "reshape_as", "t", "transpose", "swapaxes",
    "swapdims", "permute", "narrow", "select", "unsqueeze", "squeeze", "flatten", "unflatten",
    "expand", "expand_as", "as_strided", "diagonal", "movedim", "moveaxis", "unfold", "detach",
    "view_as_real", "real", "imag",
})
_MULTI_VIEWS = frozenset({
    "split", "chunk", "unbind", "split_with_sizes", "tensor_split", "hsplit", "vsplit", "dsplit",
})
_VIEW_PROPERTIES = frozenset({"T", "mT", "H", "mH", "real", "imag"})
_AUGMENTED = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
    "__imatmul__",
})
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "retain_grad", "detach_"})
_LEAF_PROPERTIES = frozenset({"is_leaf", "grad_fn", "requires_grad"})


class EffectiveTensor(torch.Tensor):
    """W = m * w of a materialized gauge's tensor: computes like W, writes reach w."""

    _gc_param: nn.Parameter  # the stored Parameter w
    _gc_m: float  # W = m * w (for kind "grad": dL/dW = (dL/dw) / m)
    _gc_name: str
    _gc_kind: str  # "value" or "grad"
    _gc_path: tuple  # the views from the full tensor to this one
    _gc_detached: bool  # reached through .data / .detach() / a state dict: no autograd checks

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs=None):
        kwargs = kwargs or {}
        _catch_up(args, kwargs)
        owner = getattr(func, "__self__", None)
        if isinstance(owner, _GETSET):
            return _property(func, owner.__name__, args)
        name = getattr(func, "__name__", "")
        targets = _write_targets(name, args, kwargs)
        if targets:
            return _write(func, args, kwargs, targets)
        this = args[0] if args else None
        if isinstance(this, EffectiveTensor):
            special = _METHODS.get(name)
            if special is not None and not this._gc_path:
                return special(this, *args[1:], **kwargs)
            if name in _VIEWS:
                return _view(this, func, args, kwargs, detach=name == "detach")
            if name in _MULTI_VIEWS:
                return _views(this, func, args, kwargs)
        with _NO_TF():
            return func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only when ordinary lookup fails
        param = _attribute_owner(self, name)
        if param is not None and name in param.__dict__:
            return param.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        param = _attribute_owner(self, name)
        if param is not None and not hasattr(torch.Tensor, name):
            setattr(param, name, value)

    def __reduce_ex__(self, protocol: int):
        _catch_up_one(self)
        return _plain(self).detach().__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict) -> torch.Tensor:
        _catch_up_one(self)
        with _NO_TF():
            copy = _plain(self).detach().clone()
        if not self._gc_path and self._gc_kind == "value" and not self._gc_detached:
            return nn.Parameter(copy, requires_grad=self._gc_param.requires_grad)
        return copy


def _attribute_owner(t: EffectiveTensor, name: str) -> nn.Parameter | None:
    """The Parameter whose Python attributes ``t`` shows: that of a live read ``module.weight``
    (not a view, ``.data``, a state-dict value or a gradient: on a plain model those are other
    tensors, without the Parameter's attributes)."""
    d = t.__dict__
    if name.startswith("_gc_") or d.get("_gc_path") or d.get("_gc_kind") != "value" or \
            d.get("_gc_detached", True):
        return None
    return d.get("_gc_param")


def effective_tensor(p: torch.Tensor, m: float, name: str, detached: bool = False,
                     kind: str = "value") -> EffectiveTensor:
    """The write-through effective tensor of stored Parameter ``p`` (kind "grad": of p.grad)."""
    with _NO_TF():
        if kind == "grad":
            base = p.grad * (1.0 / m)
        elif detached:
            base = p.detach() * m
        else:
            base = p * m
        out = base.as_subclass(EffectiveTensor)
    _tag(out, p, m, name, kind, (), detached or kind == "grad")
    if kind == "value" and not detached:
        out.__dict__["_is_param"] = True  # isinstance(out, nn.Parameter), not the Parameter's
    return out


def _tag(t: torch.Tensor, p, m, name, kind, path, detached) -> None:
    t._gc_param, t._gc_m, t._gc_name = p, m, name
    t._gc_kind, t._gc_path, t._gc_detached = kind, path, detached
    t._gc_version = _version(p) if kind == "value" else None


def _version(p: torch.Tensor) -> tuple[int, int] | None:
    """What changes when the Parameter does: its version counter (in-place writes) and its
    storage (``p.data = x`` keeps the counter). None where torch keeps no counter (inference
    tensors)."""
    try:
        return p._version, p.data_ptr()
    except RuntimeError:
        return None


def _catch_up(args: tuple, kwargs: dict) -> None:
    """Re-read every effective tensor among the arguments whose Parameter changed since.

    On a plain model every read of ``module.weight`` (and every state-dict value) aliases the
    Parameter, so a write through one, a tied use or an optimizer step shows in all of them;
    here a read holds m * w as it was, so it is brought up to date before it is used.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, EffectiveTensor):
                    _catch_up_one(item)
        elif isinstance(value, EffectiveTensor):
            _catch_up_one(value)


def _catch_up_one(t: EffectiveTensor) -> None:
    seen = t.__dict__.get("_gc_version")
    if seen is None:
        return
    now = _version(t._gc_param)
    if now is not None and now != seen:
        _refresh(t, _replay(_current(t), t._gc_path))
        t._gc_version = now


def _plain(t: torch.Tensor) -> torch.Tensor:
    with _NO_TF():
        return torch.Tensor.as_subclass(t, torch.Tensor)


def _unwrap(value: Any) -> Any:
    if isinstance(value, EffectiveTensor):
        return _plain(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


# -- views -------------------------------------------------------------------------------------
def _view(this: EffectiveTensor, func, args, kwargs, detach: bool = False, index=None):
    rest, kw = _unwrap(args[1:]), _unwrap(kwargs)
    with _NO_TF():
        out = func(_plain(this), *rest, **kw)
        if index is not None:
            out = out[index]
        out = out.as_subclass(EffectiveTensor)
    step = () if detach else ((func, rest, kw, index),)
    _tag(out, this._gc_param, this._gc_m, this._gc_name, this._gc_kind,
         this._gc_path + step, this._gc_detached or detach)
    return out


def _views(this: EffectiveTensor, func, args, kwargs):
    rest, kw = _unwrap(args[1:]), _unwrap(kwargs)
    with _NO_TF():
        count = len(func(_plain(this), *rest, **kw))
    return tuple(_view(this, func, args, kwargs, index=i) for i in range(count))


def _replay(full: torch.Tensor, path: tuple) -> torch.Tensor:
    with _NO_TF():
        for func, rest, kw, index in path:
            full = func(full, *rest, **kw)
            if index is not None:
                full = full[index]
    return full


# -- properties --------------------------------------------------------------------------------
def _property(func, prop: str, args: tuple):
    this = args[0]
    root = isinstance(this, EffectiveTensor) and not this._gc_path and this._gc_kind == "value"
    kind = func.__name__
    if isinstance(this, EffectiveTensor) and kind == "__get__":
        if prop == "data":
            return _view(this, torch.Tensor.detach, (this,), {}, detach=True)
        if prop in _VIEW_PROPERTIES:
            return _view(this, func.__self__.__get__, (this,), {})
        if root and prop == "grad":
            p = this._gc_param
            return None if p.grad is None else effective_tensor(p, this._gc_m, this._gc_name,
                                                                kind="grad")
        if root and prop in _LEAF_PROPERTIES and not this._gc_detached:
            return getattr(this._gc_param, prop)
    if root and kind == "__set__":
        value = args[1]
        p, m = this._gc_param, this._gc_m
        if prop == "requires_grad" and not this._gc_detached:
            p.requires_grad = value
            return None
        if prop == "grad":
            p.grad = None if value is None else unfold(_plain(value).detach(), 1.0 / m)
            return None
        if prop == "data":
            p.data = unfold(_plain(value).detach(), m, this._gc_name)
            _refresh(this, _current(this))
            this._gc_version = _version(p)
            return None
    with _NO_TF():
        return func(*_unwrap(args))


def _requires_grad_(this: EffectiveTensor, requires_grad: bool = True) -> EffectiveTensor:
    if this._gc_kind == "value" and not this._gc_detached:
        this._gc_param.requires_grad_(requires_grad)
        return this
    with _NO_TF():
        torch.Tensor.requires_grad_(this, requires_grad)
    return this


def _register_hook(this: EffectiveTensor, hook: Callable):
    """A hook on W: it sees dL/dW = (dL/dw)/m and returns an effective gradient (or None)."""
    if this._gc_kind != "value" or this._gc_detached:
        with _NO_TF():
            return torch.Tensor.register_hook(_plain(this), hook)
    m = this._gc_m

    def stored_hook(grad: torch.Tensor):
        out = hook(grad * (1.0 / m))
        return None if out is None else unfold(out, 1.0 / m)

    return this._gc_param.register_hook(stored_hook)


def _register_post_accumulate_grad_hook(this: EffectiveTensor, hook: Callable):
    if this._gc_kind != "value" or this._gc_detached:
        with _NO_TF():
            return torch.Tensor.register_post_accumulate_grad_hook(_plain(this), hook)
    return this._gc_param.register_post_accumulate_grad_hook(lambda _p: hook(this))


def _retain_grad(this: EffectiveTensor) -> None:
    return None  # the Parameter is a leaf: its .grad is kept anyway


_METHODS: dict[str, Callable] = {
    "requires_grad_": _requires_grad_, "register_hook": _register_hook,
    "register_post_accumulate_grad_hook": _register_post_accumulate_grad_hook,
    "retain_grad": _retain_grad,
}


# -- writes ------------------------------------------------------------------------------------
def _write_targets(name: str, args: tuple, kwargs: dict) -> list[EffectiveTensor]:
    found: list[EffectiveTensor] = []
    out = kwargs.get("out")
    for t in out if isinstance(out, (list, tuple)) else (out,):
        if isinstance(t, EffectiveTensor):
            found.append(t)
    if name in _NOT_WRITES or not (args or kwargs):
        return found
    inplace = name in _AUGMENTED or (name.endswith("_") and not name.endswith("__"))
    if not inplace:
        return found
    # torch.nn.init's normal_, uniform_, constant_, kaiming_uniform_ hand the tensor over by
    # keyword (handle_torch_function(normal_, (tensor,), tensor=tensor, ...)): the target is the
    # first argument, positional or not
    first = args[0] if args else next(iter(kwargs.values()))
    if name.startswith("_foreach_") and isinstance(first, (list, tuple)):
        found.extend(t for t in first if isinstance(t, EffectiveTensor))
    elif isinstance(first, EffectiveTensor):
        found.append(first)
    return found


def _current(t: EffectiveTensor) -> torch.Tensor:
    """The tensor's whole effective value now, as a fresh plain tensor."""
    p, m = t._gc_param, t._gc_m
    with torch.no_grad(), _NO_TF():
        if t._gc_kind == "grad":
            return p.grad * (1.0 / m)
        return p.detach() * m


def _write(func, args, kwargs, targets: list[EffectiveTensor]):
    fulls: dict[tuple[int, str], tuple[EffectiveTensor, torch.Tensor]] = {}
    views: dict[int, torch.Tensor] = {}
    for t in targets:
        key = (id(t._gc_param), t._gc_kind)
        if key not in fulls:
            fulls[key] = (t, _current(t))
        views[id(t)] = _replay(fulls[key][1], t._gc_path)

    def sub(value):
        if isinstance(value, EffectiveTensor):
            return views.get(id(value), _plain(value))
        if isinstance(value, (list, tuple)):
            return type(value)(sub(v) for v in value)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    new_args, new_kwargs = sub(args), sub(kwargs)
    with torch.no_grad(), _NO_TF():
        result = func(*new_args, **new_kwargs)
    # torch.nn.init's functions run under no_grad themselves (its documented contract), but the
    # override is called before they enter it: on a plain model they write into trained leaves
    no_grad = getattr(func, "__module__", None) == "torch.nn.init"
    for t, full in fulls.values():
        _store(t, full, no_grad)
    for t in targets:
        _refresh(t, views[id(t)])
        if t._gc_kind == "value":
            t._gc_version = _version(t._gc_param)
    for t in targets:
        if result is views[id(t)]:
            return t
    return result


def _store(t: EffectiveTensor, full: torch.Tensor, no_grad: bool = False) -> None:
    """Write the new effective value into the stored Parameter (or its gradient)."""
    p, m = t._gc_param, t._gc_m
    with _NO_TF():
        if t._gc_kind == "grad":
            with torch.no_grad():
                p.grad.copy_(unfold(full, 1.0 / m))
            return
        w = unfold(full, m, t._gc_name)
        if torch.is_grad_enabled() and not (no_grad or t._gc_detached) and p.requires_grad:
            p.copy_(w)  # raises torch's own error, as a write into a plain model's leaf does
        else:
            with torch.no_grad():
                p.copy_(w)


def _refresh(t: EffectiveTensor, value: torch.Tensor) -> None:
    """Let the snapshot itself show the written values too (a plain Parameter would)."""
    plain = _plain(t)
    if plain.shape != value.shape:
        return
    mode = torch.inference_mode() if plain.is_inference() else torch.no_grad()
    with mode, _NO_TF():
        plain.copy_(value)
