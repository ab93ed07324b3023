"""The Hugging Face Trainer with per-tensor optimizer groups from the model's gauge.

Two ways in:

* the stock ``Trainer``: ``Trainer(..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args))``.
  The Trainer calls our factory with the model (its hook for "complex optimizers"), and the
  factory builds one group per tensor with lr, eps and weight decay moved into the gauge.
* ``GaugeTrainer``: a Trainer subclass that does the above by itself and refuses set-ups that
  would silently drop the groups (a DeepSpeed config with its own "optimizer" section).

Group 0 is an empty group whose lr is the base learning rate, so what the Trainer logs as
``learning_rate`` (the scheduler's first group) is eta times the schedule, not the lr of some
tensor. LR schedulers are LambdaLRs over per-group base_lrs, so the per-tensor ratios hold at
every step; biases and norm parameters get no weight decay, by the Trainer's own rule. Weight
decay scales as the model's GaugeConfig says (``wd_scaling``: coupled to lambda or independent,
THEORY.md section 6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..clip import clip_grad_norm_, effective_grad_norm
from ..errors import GaugeError, UnsupportedOptimizerError
from ..forms import PLAIN
from ..model import BASE_LR_GROUP, optimizer_class
from .model import get_gauged
from .peft import ensure_gauged

__all__ = ["GaugeOptimizerFactory", "optimizer_cls_and_kwargs", "GaugeTrainer", "BASE_LR_GROUP"]

_OPTIM_NAMES = {
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "sgd": "sgd",
    "adagrad": "adagrad", "rmsprop": "rmsprop",
}


def _decay_names(model: nn.Module) -> set[str]:
    from transformers import Trainer

    # the Trainer's own rule (LayerNorm layers, names with bias/norm); it does not use self
    return set(Trainer.get_decay_parameter_names(None, model))


class GaugeOptimizerFactory:
    """Called by the Trainer as ``GaugeOptimizerFactory()(model, **kwargs)``.

    Tensors with identical hyperparameters share a group (``merge=False``: one per tensor);
    every group carries ``param_names``.
    """

    def __call__(
        self,
        model: nn.Module,
        optimizer: str | type = "adamw",
        lr: float = 1e-3,
        base_lr_group: bool = True,
        merge: bool = True,
        **hyper: Any,
    ) -> torch.optim.Optimizer:
        model = ensure_gauged(model)  # a PeftModel: its inner model, re-gauged if adapters were added
        decay = _decay_names(model)
        return get_gauged(model).make_optimizer(
            optimizer, lr, no_decay=lambda name, p: name not in decay,
            base_lr_group=base_lr_group, merge=merge, **hyper,
        )


def optimizer_cls_and_kwargs(args: Any, optimizer: str | None = None, **hyper: Any):
    """``(factory, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)`` from TrainingArguments.

    The optimizer follows ``args.optim`` (adamw_torch, sgd, adagrad, rmsprop) unless given;
    lr, weight decay, Adam's betas and eps come from ``args``; ``hyper`` adds or overrides
    (e.g. ``momentum=0.9`` for SGD).
    """
    name = optimizer or str(getattr(args.optim, "value", args.optim))
    key = _OPTIM_NAMES.get(name, name)
    try:
        optimizer_class(key)
    except UnsupportedOptimizerError:
        raise UnsupportedOptimizerError(
            f"TrainingArguments.optim={name!r} is not supported by gaugeconv; use one of "
            f"{sorted(_OPTIM_NAMES)} or pass optimizer="
        ) from None
    kwargs: dict[str, Any] = {"optimizer": key, "lr": args.learning_rate,
                              "weight_decay": args.weight_decay}
    if key in ("adamw", "adam"):
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    kwargs.update(hyper)
    return GaugeOptimizerFactory, kwargs


def _trainer_base():
    from transformers import Trainer

    return Trainer


class GaugeTrainer(_trainer_base()):
    """A Trainer whose default optimizer has the model's per-tensor gauge groups.

    Gradient clipping (``max_grad_norm``) uses the norm of the effective gradients, which is the
    same in every gauge: in the plain form the model's gradients are the effective ones, so the
    Trainer's own clipping is used (accelerate's, aware of FSDP, DeepSpeed and device meshes);
    in the materialized form the stored gradients are m times the effective ones, and the
    Trainer's own clipping (by the stored norm) would tell gauges apart, so gaugeconv's
    effective norm is used.
    ``optimizer_hyper`` adds optimizer keywords (SGD's momentum, say). DeepSpeed configs that
    define their own optimizer are refused: DeepSpeed would build it from all parameters in one
    group and the gauge's learning rates would be lost. FSDP keeps the groups when
    ``use_orig_params`` is on (the default for FSDP2).
    """

    def __init__(self, *args: Any, optimizer_hyper: dict[str, Any] | None = None, **kwargs: Any):
        model = kwargs.get("model", args[0] if args else None)
        ensure_gauged(model)  # peft: adapters added after apply_gauge get their roles
        get_gauged(model)  # refuse a model without a gauge up front
        super().__init__(*args, **kwargs)
        ds = getattr(self.args, "hf_deepspeed_config", None)
        if ds is not None and "optimizer" in getattr(ds, "config", {}):
            raise GaugeError(
                "the DeepSpeed config has its own 'optimizer' section, which would replace the "
                "gauge's per-tensor groups; remove it so the Trainer builds the optimizer"
            )
        if self.optimizer_cls_and_kwargs is None and self.optimizer is None:
            self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs(
                self.args, **(optimizer_hyper or {})
            )

    def _clip_grad_norm(self, model: nn.Module):
        if get_gauged(self.model).form == PLAIN:
            return super()._clip_grad_norm(model)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            self.accelerator.unscale_gradients()
        return clip_grad_norm_(get_gauged(self.model), self.args.max_grad_norm)

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):
        if get_gauged(self.model).form == PLAIN:
            return super()._get_grad_norm(model, grad_norm)
        if grad_norm is None:
            grad_norm = effective_grad_norm(get_gauged(self.model))
        return grad_norm.item() if hasattr(grad_norm, "item") else float(grad_norm)
