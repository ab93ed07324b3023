"""Which modules of a model carry multipliers: swapping classes in and out (materialized form).

``Multipliers(model, {use path: m})`` puts every use's multiplier on its module (the class swap
of ``gauged_class``); modules whose multipliers are all 1 keep their own class, so the STP gauge
and the plain form swap nothing. One registration per use: a tensor shared by two modules (tied
embeddings) carries a multiplier per module; a module reached by two paths (a block registered
twice) is gauged once.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..errors import GaugeError
from .gauged_class import (
    ACCELERATE,
    BASE_ATTR,
    CARRY_ATTR,
    FSDP_ATTR,
    M_ATTR,
    OWNED_ATTR,
    PATH_ATTR,
    GaugedModuleMixin,
    gauged_class,
)

__all__ = ["Multipliers", "multipliers_of", "is_gauged_module", "owns"]

_CARRIED = ("infshape",)  # attributes of a stored Parameter that modules read (microsoft/mup)


def is_gauged_module(module: nn.Module) -> bool:
    return isinstance(module, GaugedModuleMixin)


def multipliers_of(module: nn.Module) -> dict[str, float]:
    """The multipliers a module applies (empty for a module that is not gauged)."""
    return dict(module.__dict__.get(M_ATTR, {}))


def owns(module: nn.Module, name: str) -> bool:
    """Whether a gauged module's slot ``name`` holds the Parameter the gauge was applied to."""
    owned = module.__dict__.get(OWNED_ATTR, {})
    return name in owned and module._parameters.get(name) is owned[name]


def _check_module(module: nn.Module, path: str) -> None:
    """Refuse a module that cannot carry multipliers (checked before anything changes)."""
    if "_hf_hook" in module.__dict__ or "_old_forward" in module.__dict__:
        raise GaugeError(f"{path or 'model'} ({type(module).__name__}) carries {ACCELERATE}")
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


def _gauge_module(module: nn.Module, path: str, attrs: dict[str, float]) -> None:
    if not isinstance(module, GaugedModuleMixin):
        module.__dict__[M_ATTR] = {}
        module.__dict__[OWNED_ATTR] = {}
        # the instance's own class, so that removing the gauge gives it back
        module.__class__ = gauged_class(type(module), tuple(module._parameters))
    module.__dict__[M_ATTR] = dict(attrs)
    module.__dict__[OWNED_ATTR] = {name: module._parameters[name] for name in attrs}
    module.__dict__[PATH_ATTR] = path
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
    if BASE_ATTR in cls.__dict__:  # our class on top (not wrapped again, e.g. by FSDP2)
        module.__class__ = cls.__dict__[BASE_ATTR]
        for attr in (M_ATTR, OWNED_ATTR, PATH_ATTR, CARRY_ATTR, FSDP_ATTR):
            module.__dict__.pop(attr, None)


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
        for module in self._modules.values():
            if id(module) not in wanted:
                _ungauge_module(module)
        for module, path, attrs in wanted.values():
            _gauge_module(module, path, attrs)
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

    def modules(self) -> list[nn.Module]:
        """The modules that carry multipliers."""
        return list(self._modules.values())
