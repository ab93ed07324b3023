"""Batches and a loss for a transformers model, from its config alone or from a user's file.

The task follows the model class (transformers' naming): causal LM (``...ForCausalLM``,
``...LMHeadModel``), masked LM, sequence-to-sequence (``...ForConditionalGeneration`` with
token inputs: T5, BART), sequence and token classification, image classification (synthetic
pixels of ``config.image_size`` and ``num_channels``), and headless encoders or decoders
(``BertModel``: a regression of last_hidden_state on a fixed random target). Anything else
(speech, multimodal, detection heads...) is refused by name: nothing here can feed it.

Synthetic tokens are learnable sequences (arithmetic progressions modulo the vocabulary, above
the usual special ids 0-2), so the loss visibly falls. The loss is computed from the logits in
their own dtype: transformers' built-in losses upcast to float32 (``logits.float()``), which
would cap a float64 comparison at float32 rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GaugeError

__all__ = ["Feed", "feed_for", "task_of", "loss_for", "TASKS"]

TASKS = ("causal-lm", "masked-lm", "seq2seq", "sequence-classification",
         "token-classification", "image-classification", "hidden-state")
_SUFFIX = (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
           ("ForMaskedLM", "masked-lm"), ("ForConditionalGeneration", "seq2seq"),
           ("ForSequenceClassification", "sequence-classification"),
           ("ForTokenClassification", "token-classification"),
           ("ForImageClassification", "image-classification"))
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions",
                    "context_length")


def task_of(model: nn.Module) -> str:
    """The training task of a transformers model, or a GaugeError naming what cannot be fed."""
    name = type(model).__name__
    main = getattr(model, "main_input_name", "input_ids")
    config = getattr(model, "config", None)
    task = next((t for suffix, t in _SUFFIX if name.endswith(suffix)), None)
    if task is None and name.endswith("Model") and main in ("input_ids", "pixel_values") \
            and not _is_multimodal(config):
        task = "hidden-state"
    if task == "seq2seq" and not getattr(config, "is_encoder_decoder", False):
        task = None
    if task == "image-classification" and main != "pixel_values":
        task = None
    if task is not None and task != "image-classification" and task != "hidden-state" \
            and main != "input_ids":
        task = None
    if task is None:
        raise GaugeError(
            f"cannot feed {name} (main input {main!r}): verify feeds causal and masked LMs, "
            "sequence-to-sequence text models, sequence/token/image classifiers and headless "
            "text or vision models")
    if main == "input_ids" and not isinstance(getattr(config, "vocab_size", None), int):
        raise GaugeError(f"cannot feed {name}: its config has no vocab_size for synthetic tokens")
    return task


def _is_multimodal(config: Any) -> bool:
    return any(getattr(config, k, None) is not None for k in ("text_config", "vision_config"))


def _seq_len(config: Any, want: int) -> int:
    limits = [getattr(config, f) for f in _POSITION_FIELDS
              if isinstance(getattr(config, f, None), int) and getattr(config, f) > 1]
    return min([want] + limits)


def _image_shape(config: Any, name: str) -> tuple[int, int, int]:
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and isinstance(channels, int)):
        raise GaugeError(f"cannot feed {name}: its config gives no image_size and num_channels "
                         "for synthetic pixels")
    return channels, int(size[0]), int(size[1])


@dataclass
class Feed:
    """Batches (inputs, targets) for a model and the loss that goes with them."""

    task: str
    batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]]
    loss: Callable[[Any, torch.Tensor], torch.Tensor]
    description: str


def _progressions(n: int, length: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    low = 3 if vocab > 8 else 0
    start = torch.randint(0, vocab - low, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    return low + (start + step * torch.arange(length)) % (vocab - low)


def _mask_token_id(folder: Path | None, vocab: int) -> int:
    """The tokenizer's mask token id where the folder says it (JSON only), else vocab - 1."""
    if folder is not None and (folder / "tokenizer.json").is_file():
        for cfg in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                token = json.loads((folder / cfg).read_text()).get("mask_token")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                from tokenizers import Tokenizer

                tid = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(token)
                if tid is not None and 0 <= tid < vocab:
                    return int(tid)
    return vocab - 1


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                       labels.reshape(-1).to(logits.device), ignore_index=-100)


def loss_for(task: str, seed: int = 0) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The loss of a task, from the outputs and the targets (labels), in the logits' dtype."""

    def loss(out: Any, target: torch.Tensor) -> torch.Tensor:
        if task == "hidden-state":
            h = out.last_hidden_state
            gen = torch.Generator().manual_seed(seed)
            goal = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h)
            return 0.5 * (h - goal).pow(2).mean()
        logits = out.logits
        if task == "causal-lm":
            return _cross_entropy(logits[:, :-1], target[:, 1:])
        return _cross_entropy(logits, target)

    return loss


def _token_batches(task: str, rows: torch.Tensor, model: nn.Module, batch_size: int,
                   count: int, gen: torch.Generator, mask_id: int) -> list:
    config = model.config
    out = []
    for i in range(count):
        idx = torch.arange(i * batch_size, (i + 1) * batch_size) % rows.shape[0]
        ids = rows[idx].clone()
        n, length = ids.shape
        if task == "causal-lm":
            out.append(({"input_ids": ids}, ids))
        elif task == "masked-lm":
            mask = torch.rand(n, length, generator=gen) < 0.15
            mask[torch.arange(n), torch.randint(0, length, (n,), generator=gen)] = True
            labels = torch.where(mask, ids, torch.full_like(ids, -100))
            out.append(({"input_ids": torch.where(mask, torch.full_like(ids, mask_id), ids)},
                        labels))
        elif task == "seq2seq":
            half = max(2, length // 2)
            labels = ids[:, -half:].clone()
            decoder = _decoder_inputs(model, labels)
            out.append(({"input_ids": ids[:, :max(1, length - half)],
                         "decoder_input_ids": decoder}, labels))
        elif task == "sequence-classification":
            labels = torch.randint(0, max(1, int(config.num_labels)), (n,), generator=gen)
            out.append(({"input_ids": ids}, labels))
        elif task == "token-classification":
            labels = torch.randint(0, max(1, int(config.num_labels)), (n, length), generator=gen)
            out.append(({"input_ids": ids}, labels))
        else:  # hidden-state
            out.append(({"input_ids": ids}, ids))
    return out


def _decoder_inputs(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise GaugeError(f"cannot feed {type(model).__name__}: its config has no "
                         "decoder_start_token_id to start the decoder inputs")
    if prepare is not None:
        return prepare(labels=labels)
    shifted = labels.new_full(labels.shape, int(start))
    shifted[:, 1:] = labels[:, :-1]
    return shifted


def _image_batches(task: str, pixels: torch.Tensor, model: nn.Module, batch_size: int,
                   count: int, gen: torch.Generator) -> list:
    labels_n = max(1, int(getattr(model.config, "num_labels", 1)))
    out = []
    for i in range(count):
        idx = torch.arange(i * batch_size, (i + 1) * batch_size) % pixels.shape[0]
        labels = torch.randint(0, labels_n, (batch_size,), generator=gen)
        out.append(({"pixel_values": pixels[idx].clone()}, labels))
    return out


def _rows_from_file(path: Path, model: nn.Module, folder: Path | None, seq_len: int,
                    task: str) -> tuple[torch.Tensor, str]:
    name = type(model).__name__
    if not path.is_file():
        raise GaugeError(f"--data {path}: no such file")
    if path.suffix == ".pt":
        from ..checkpoint.optimizer_files import load_trusted

        try:
            data = load_trusted(path)
        except Exception as err:  # CheckpointError (a GaugeError) names the file already
            raise GaugeError(f"--data {path}: {err}") from None
        if not isinstance(data, torch.Tensor):
            raise GaugeError(f"--data {path} holds a {type(data).__name__}, not a tensor")
        if task in ("image-classification",) or getattr(model, "main_input_name", "") == \
                "pixel_values":
            if data.ndim != 4 or not data.is_floating_point():
                raise GaugeError(f"--data {path}: {name} needs float pixel_values [N, C, H, W], "
                                 f"not {data.dtype} of shape {list(data.shape)}")
            return data, f"pixel_values from {path.name} ({list(data.shape)})"
        if data.ndim != 2 or data.dtype not in (torch.int64, torch.int32) or data.numel() == 0:
            raise GaugeError(f"--data {path}: expected input_ids, an integer tensor [N, T], not "
                             f"{data.dtype} of shape {list(data.shape)}")
        vocab = int(model.config.vocab_size)
        if int(data.min()) < 0 or int(data.max()) >= vocab:
            raise GaugeError(f"--data {path}: token ids must lie in [0, {vocab}) (vocab_size), "
                             f"found {int(data.min())}..{int(data.max())}")
        rows = data.long()[:, :seq_len]
        return rows, f"input_ids from {path.name} ({data.shape[0]} rows, {rows.shape[1]} tokens)"
    if path.suffix != ".jsonl":
        raise GaugeError(f"--data {path}: give a .jsonl of texts or a .pt of input_ids")
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        raise GaugeError(f"--data {path}: texts cannot feed {name}; give a .pt of pixel_values")
    return _rows_from_texts(path, model, folder, seq_len)


def _rows_from_texts(path: Path, model: nn.Module, folder: Path | None,
                     seq_len: int) -> tuple[torch.Tensor, str]:
    from tokenizers import Tokenizer

    tok_file = folder / "tokenizer.json" if folder is not None else None
    if tok_file is None or not tok_file.is_file():
        raise GaugeError(f"--data {path}: texts need the folder's tokenizer.json (a fast "
                         "tokenizer); give a .pt of input_ids instead")
    tokenizer = Tokenizer.from_file(str(tok_file))  # data only: no code from the folder runs
    vocab = int(model.config.vocab_size)
    ids: list[int] = []
    texts = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise GaugeError(f"--data {path}:{number}: not a JSON line") from None
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise GaugeError(f"--data {path}:{number}: expected a string or an object with "
                                 "\"text\"")
            piece = tokenizer.encode(text).ids
            bad = [t for t in piece if not 0 <= t < vocab]
            if bad:
                raise GaugeError(f"--data {path}:{number}: the tokenizer gives id {bad[0]}, "
                                 f"outside the model's vocab_size {vocab}")
            ids.extend(piece)
            texts += 1
    rows = len(ids) // seq_len
    if rows < 1:
        raise GaugeError(f"--data {path}: {texts} text(s) give {len(ids)} tokens, fewer than one "
                         f"sequence of {seq_len}")
    data = torch.tensor(ids[: rows * seq_len]).reshape(rows, seq_len)
    return data, f"{texts} texts from {path.name}, tokenized ({rows} sequences of {seq_len})"


def feed_for(model: nn.Module, steps: int, batch_size: int = 4, seq_len: int = 16,
             data: str | Path | None = None, folder: str | Path | None = None,
             seed: int = 0) -> Feed:
    """Batches for ``steps`` steps (synthetic, or rows of ``data`` cycled) and their loss.

    ``folder``: where the tokenizer lives (``tokenizer.json``, for --data texts and the mask id).
    """
    task = task_of(model)
    name = type(model).__name__
    folder = Path(folder) if folder is not None else None
    gen = torch.Generator().manual_seed(seed)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if task in ("image-classification",) or (task == "hidden-state" and
                                             model.main_input_name == "pixel_values"):
        c, h, w = _image_shape(model.config, name)
        if data is not None:
            pixels, what = _rows_from_file(Path(data), model, folder, seq_len, task)
            if tuple(pixels.shape[1:]) != (c, h, w):
                raise GaugeError(f"--data {data}: {name} takes pixel_values of shape [N, {c}, "
                                 f"{h}, {w}], not {list(pixels.shape)}")
        else:
            pixels = torch.randn(batch_size * steps, c, h, w, generator=gen, dtype=torch.float64)
            what = f"synthetic pixels [{batch_size}, {c}, {h}, {w}] (standard normal)"
        pixels = pixels.to(dtype)
        if task == "hidden-state":
            batches = [({"pixel_values": pixels[(torch.arange(i * batch_size, (i + 1) *
                                                               batch_size) % pixels.shape[0])]},
                        torch.empty(0)) for i in range(steps)]
        else:
            batches = _image_batches(task, pixels, model, batch_size, steps, gen)
        return Feed(task, batches, loss_for(task, seed), f"{what}; task {task}")
    length = _seq_len(model.config, seq_len)
    if length < 2:
        raise GaugeError(f"cannot feed {name}: sequences of {length} token(s) are too short")
    vocab = int(model.config.vocab_size)
    if data is not None:
        rows, what = _rows_from_file(Path(data), model, folder, length, task)
        if rows.shape[1] < 2:
            raise GaugeError(f"--data {data}: sequences of {rows.shape[1]} token(s) are too short")
    else:
        rows = _progressions(batch_size * steps, length, vocab, gen)
        what = (f"synthetic tokens [{batch_size}, {length}] (arithmetic progressions modulo "
                f"vocab_size {vocab})")
    batches = _token_batches(task, rows, model, batch_size, steps, gen,
                             _mask_token_id(folder, vocab))
    return Feed(task, batches, loss_for(task, seed), f"{what}; task {task}")
