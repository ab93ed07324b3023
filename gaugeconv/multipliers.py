"""Forward multipliers attached with hooks: the module computes with W = m * w.

A forward pre-hook puts the effective tensor m*w in the module's parameter slot for the
duration of its forward call, and a forward hook (always called, also on exceptions) puts the
stored Parameter back. The module's code, its forward and its state-dict keys are untouched;
gradients reach the stored tensor through the product, as d(m*w)/dw = m (THEORY.md section 4:
the stored gradient is m times the effective one). One registration per use, so a tensor shared
by two modules (tied embeddings) can be used with a different multiplier by each.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["MultiplierHooks"]


class _ModuleMultipliers:
    """Hooks of one module: attribute name -> multiplier."""

    def __init__(self, multipliers: dict[str, float]) -> None:
        self.multipliers = multipliers
        self._stash: list[dict[str, torch.Tensor]] = []

    def pre(self, module: nn.Module, args: tuple) -> None:
        saved = {}
        for attr, m in self.multipliers.items():
            stored = module._parameters[attr]
            saved[attr] = stored
            effective = stored * m
            if stored.__dict__:  # attributes other code reads (mup's infshape) come along
                effective.__dict__.update(stored.__dict__)
            module._parameters[attr] = effective
        self._stash.append(saved)

    def post(self, module: nn.Module, args: tuple, output: object) -> None:
        if not self._stash:
            return
        for attr, stored in self._stash.pop().items():
            module._parameters[attr] = stored


class MultiplierHooks:
    """Keeps one pair of hooks on every module that has a multiplier other than 1.

    multipliers are keyed by parameter path ("layers.0.weight"), one entry per use.
    """

    def __init__(self, model: nn.Module, multipliers: Mapping[str, float]) -> None:
        self.model = model
        self._handles: list[RemovableHandle] = []
        self.multipliers: dict[str, float] = {}
        self.set(multipliers)

    def set(self, multipliers: Mapping[str, float]) -> None:
        """Replace all multipliers (hooks are re-registered; modules with m = 1 get none)."""
        self.remove()
        self.multipliers = dict(multipliers)
        per_module: dict[str, dict[str, float]] = {}
        for path, m in self.multipliers.items():
            module_path, _, attr = path.rpartition(".")
            if m != 1.0:
                per_module.setdefault(module_path, {})[attr] = float(m)
        for module_path, attrs in per_module.items():
            module = self.model.get_submodule(module_path)
            for attr in attrs:
                if not isinstance(module._parameters.get(attr), nn.Parameter):
                    raise KeyError(f"{module_path or 'model'} has no parameter {attr!r}")
            hook = _ModuleMultipliers(attrs)
            self._handles.append(module.register_forward_pre_hook(hook.pre))
            self._handles.append(module.register_forward_hook(hook.post, always_call=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> int:
        """Number of modules carrying hooks."""
        return len(self._handles) // 2
