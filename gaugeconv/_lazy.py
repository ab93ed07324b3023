"""Lazy package attributes (PEP 562): a package names its public objects and the submodule of
each, and a submodule is imported only when one of its names is first used.

``gaugeconv --help`` and the commands that read files (convert, roles, classify) import neither
torch nor transformers through a package ``__init__``; each imports what it uses.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                                       Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``where`` maps name -> submodule."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # the next lookup is an ordinary one
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__


class _Shadowing(types.ModuleType):
    """A package whose attribute ``X`` is the object ``X`` of its submodule ``.X`` (gaugeconv's
    ``convert`` function in ``gaugeconv/convert.py``, ``verify`` in ``verify.py``). Importing
    the submodule makes the import system set the package's attribute to the submodule; here
    the object replaces it, as the eager ``from .convert import convert`` did, whatever imports
    the submodule first."""

    _shadowed: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._shadowed and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


def shadow_submodules(package: str, where: Mapping[str, str]) -> None:
    """Make ``package.NAME`` the object NAME of submodule ``package.NAME`` for every name of
    ``where`` that is also its submodule's name (gaugeconv.convert, gaugeconv.verify...)."""
    names = frozenset(n for n, module in where.items() if module == f".{n}")
    module = sys.modules[package]
    module.__class__ = type("Package", (_Shadowing,), {"_shadowed": names})
    for name in names:
        sub = sys.modules.get(f"{package}.{name}")
        if sub is not None:
            setattr(module, name, sub)
