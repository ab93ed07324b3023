"""Resume a Trainer checkpoint's optimizer and LR schedule as the Trainer would, without its loop.

The Trainer resumes by building its optimizer and scheduler from TrainingArguments and then
loading ``optimizer.pt`` and ``scheduler.pt`` into them (``load_state_dict``). Here:

* the optimizer is built by ``GaugeOptimizerFactory`` (what GaugeTrainer uses) with the
  optimizer class the saved groups show (their hyperparameter keys: SGD, Adam, AdamW, Adagrad,
  RMSprop); when its groups are not the saved ones (tensor for tensor, by ``param_names``),
  the groups are built from the saved ``param_names`` instead, and the report says so. Either
  way ``load_state_dict`` then sets every hyperparameter and state tensor from optimizer.pt.
* the scheduler is transformers' ``get_scheduler`` with the saved TrainingArguments'
  lr_scheduler_type, warmup and kwargs over trainer_state.json's max_steps, then
  ``load_state_dict(scheduler.pt)``; clipping is their max_grad_norm.

training_args.bin is a pickled TrainingArguments. It is never unpickled as such: it is read with
``torch.load(weights_only=True)``, where each class it names (transformers' and accelerate's
only) is replaced by an inert record of its fields, so no code from the folder or from those
classes runs. A file that names any other class, or none at all, is not read: the schedule then
continues at the saved learning rates (constant) without clipping, and the report says so.
optimizer.pt and scheduler.pt are read with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.optimizer_files import infer_rule, load_trusted
from ..errors import GaugeError
from ..model import BASE_LR_GROUP

__all__ = ["TrainerCheckpoint", "read_trainer_checkpoint", "restore_optimizer",
           "read_training_args"]

_ALLOWED_MODULES = ("transformers.", "accelerate.")


@dataclass
class TrainerCheckpoint:
    """What a Trainer checkpoint folder holds beside the model, read as data."""

    folder: Path
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None
    global_step: int
    max_steps: int | None
    args: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


class _Fields:
    """Stands in for a class named in training_args.bin: keeps the fields, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Fields:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _plain(value: Any) -> Any:
    if isinstance(value, _Fields):
        fields = {k: v for k, v in value.__dict__.items() if k != "_args"}
        if not fields and len(value._args) == 1:  # an enum member: its value
            return _plain(value._args[0])
        return {k: _plain(v) for k, v in fields.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_training_args(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The fields of a pickled TrainingArguments, or (None, why not)."""
    import warnings

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # not a torch.save zip file
        return None, f"{path.name} is not readable as data ({type(err).__name__})"
    foreign = [n for n in names if not n.startswith(_ALLOWED_MODULES)]
    if foreign:
        return None, f"{path.name} names classes outside transformers and accelerate ({foreign[0]})"
    stand_ins = [(type(n.rsplit(".", 1)[-1], (_Fields,), {}), n) for n in names]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(stand_ins):
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        return None, f"{path.name} cannot be read as data ({type(err).__name__})"
    fields = _plain(raw)
    if not isinstance(fields, dict):
        return None, f"{path.name} holds no TrainingArguments"
    return fields, None


def read_trainer_checkpoint(folder: str | Path) -> TrainerCheckpoint | None:
    """The optimizer, scheduler and arguments of a Trainer checkpoint; None without optimizer.pt."""
    folder = Path(folder)
    opt_file = folder / "optimizer.pt"
    if not opt_file.exists():
        return None
    if not opt_file.is_file():
        raise GaugeError(f"{opt_file} is not a file")
    state = load_trusted(opt_file)
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        raise GaugeError(f"{opt_file} is not an optimizer state_dict")
    sched_file = folder / "scheduler.pt"
    sched = load_trusted(sched_file) if sched_file.is_file() else None
    notes: list[str] = []
    step, max_steps = 0, None
    state_file = folder / "trainer_state.json"
    if state_file.is_file():
        try:
            info = json.loads(state_file.read_text())
            step = int(info.get("global_step") or 0)
            max_steps = int(info["max_steps"]) if info.get("max_steps") else None
        except (ValueError, TypeError, AttributeError):
            notes.append("trainer_state.json is not readable: step and max_steps unknown")
    args = None
    args_file = folder / "training_args.bin"
    if args_file.is_file():
        args, why = read_training_args(args_file)
        if why:
            notes.append(why)
    else:
        notes.append("no training_args.bin")
    return TrainerCheckpoint(folder, state, sched, step, max_steps, args, notes)


def _optimizer_name(groups: list[dict[str, Any]]) -> str:
    sample = next((g for g in groups if g.get("params")), groups[0])
    rule = infer_rule(sample)
    if rule.name == "Adam" and sample.get("decoupled_weight_decay"):
        return "adamw"
    return rule.name.lower()


def _saved_names(state: dict[str, Any], where: Path) -> list[list[str]]:
    out = []
    for i, group in enumerate(state["param_groups"]):
        names = group.get("param_names") if isinstance(group, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GaugeError(f"{where / 'optimizer.pt'} group {i} has no param_names, so its "
                             "tensors cannot be identified; train with gaugeconv's groups "
                             "(GaugeTrainer or optimizer_cls_and_kwargs)")
        out.append(names)
    return out


def _from_saved_groups(model: nn.Module, name: str, saved: list[list[str]],
                       state: dict[str, Any], where: Path) -> torch.optim.Optimizer:
    from ..model import optimizer_class

    params = dict(model.named_parameters())
    groups = []
    for names, group in zip(saved, state["param_groups"]):
        missing = [n for n in names if n != BASE_LR_GROUP and n not in params]
        if missing:
            raise GaugeError(f"{where / 'optimizer.pt'} names tensors the model lacks: "
                             f"{missing[:4]}")
        hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        groups.append({**hyper, "params": [params[n] for n in names if n != BASE_LR_GROUP],
                       "param_names": names})
    return optimizer_class(name)(groups)


def _schedule(ckpt: TrainerCheckpoint, optimizer: torch.optim.Optimizer) -> tuple[Any, str]:
    """The scheduler the Trainer would create (its state is loaded afterwards: creating one
    writes the group learning rates, so it must come before optimizer.pt, as in the Trainer)."""
    args, sched = ckpt.args, ckpt.scheduler_state
    if sched is None:
        return None, "no scheduler.pt: the learning rates stay as saved"
    if args is not None and ckpt.max_steps:
        from transformers import get_scheduler

        kind = args.get("lr_scheduler_type", "linear")
        warm = args.get("warmup_steps") or 0
        ratio = args.get("warmup_ratio") or 0
        total = ckpt.max_steps
        warmup = int(warm) if warm >= 1 else math.ceil(total * (warm or ratio))
        try:
            scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup,
                                      num_training_steps=total,
                                      scheduler_specific_kwargs=args.get("lr_scheduler_kwargs")
                                      or {})
        except (ValueError, TypeError, KeyError) as err:
            raise GaugeError(f"training_args.bin: lr_scheduler_type {kind!r} cannot be rebuilt "
                             f"({err})") from None
        return scheduler, (f"{kind} schedule, {warmup} warm-up steps of {total} "
                           "(training_args.bin, trainer_state.json), state from scheduler.pt")
    last = sched.get("_last_lr")
    base = sched.get("base_lrs")
    if not (isinstance(last, list) and isinstance(base, list) and len(last) == len(base)
            == len(optimizer.param_groups)):
        return None, "scheduler.pt without per-group rates: the learning rates stay as saved"
    factors = [(lr / b if b else 0.0) for lr, b in zip(last, base)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda _, f=f: f for f in factors])
    return scheduler, ("training_args.bin unreadable: the schedule continues constant at the "
                       "saved learning rates")


def restore_optimizer(model: nn.Module, ckpt: TrainerCheckpoint
                      ) -> tuple[torch.optim.Optimizer, list[Any], float, list[str]]:
    """Optimizer, schedulers, max_grad_norm and notes, as the Trainer resumes them."""
    from .trainer import GaugeOptimizerFactory

    state = copy.deepcopy(ckpt.optimizer_state)  # load_state_dict may keep its tensors
    saved = _saved_names(state, ckpt.folder)
    name = _optimizer_name(state["param_groups"])
    notes = list(ckpt.notes)
    hyper: dict[str, Any] = {"momentum": 0.9} if name == "sgd" else {}
    optimizer = None
    for merge in (True, False):
        candidate = GaugeOptimizerFactory()(model, name, lr=1.0, merge=merge, **hyper)
        if [g.get("param_names") for g in candidate.param_groups] == saved:
            optimizer = candidate
            notes.append(f"{type(candidate).__name__} built by GaugeOptimizerFactory "
                         f"({len(saved)} groups, as GaugeTrainer builds them), state from "
                         "optimizer.pt")
            break
    if optimizer is None:
        optimizer = _from_saved_groups(model, name, saved, state, ckpt.folder)
        notes.append(f"{type(optimizer).__name__} groups built from optimizer.pt's param_names "
                     "(they are not GaugeOptimizerFactory's), state from optimizer.pt")
    scheduler, how = _schedule(ckpt, optimizer)  # the Trainer's order: create, then load
    notes.append(how)
    try:
        optimizer.load_state_dict(state)
        if scheduler is not None:
            scheduler.load_state_dict(copy.deepcopy(ckpt.scheduler_state))
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise GaugeError(f"{ckpt.folder}: optimizer.pt or scheduler.pt does not fit the model: "
                         f"{str(err).splitlines()[0][:200]}") from None
    clip = 0.0
    if ckpt.args is not None:
        clip = float(ckpt.args.get("max_grad_norm") or 0.0)
    return optimizer, [scheduler] if scheduler is not None else [], clip, notes
