"""Models and runs set up with the real microsoft/mup package, shared by the import tests.

MupMLP / MupTied: dense models with MuReadout / MuSharedReadout. MupTransformer: a model in the
style of mup's own example (examples/Transformer/model.py in microsoft/mup): its own
multi-head attention with nn.MultiheadAttention's layout (a bare ``in_proj_weight`` [3E, E] and
``in_proj_bias``, ``bias_k``/``bias_v`` [1, 1, E] appended to keys and values, ``out_proj``),
mup's 1/d logit scale, post-norm LayerNorms, a GPT-2-style bare learned position table, and a
zero-initialised MuReadout or a MuSharedReadout tied to the embedding. Written here from that
description, in float64.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any

import mup
import torch
import torch.nn.functional as F
from torch import nn

D_IN, D_OUT, N0 = 64, 10, 32  # base width 32 != d_in 64


class MupMLP(nn.Module):
    def __init__(self, n: int, bias: bool = True, output_mult: float = 1.0, zero: bool = False):
        super().__init__()
        self.l1 = nn.Linear(D_IN, n, bias=bias)
        self.l2 = nn.Linear(n, n, bias=bias)
        self.out = mup.MuReadout(n, D_OUT, bias=bias, output_mult=output_mult,
                                 readout_zero_init=zero)

    def forward(self, x):
        return self.out(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


class MupTied(nn.Module):
    """Embedding tied to a MuSharedReadout (mup's tied lm_head)."""

    def __init__(self, n: int, vocab: int = 23):
        super().__init__()
        self.emb = nn.Embedding(vocab, n)
        self.mid = nn.Linear(n, n)
        # bias=False: MuSharedReadout(weight, bias=True) gives a bias of the wrong size
        self.head = mup.MuSharedReadout(self.emb.weight, bias=False, output_mult=2.0)

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))))


def make(n: int, cls=MupMLP, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(n, **kw).double()
    mup.set_base_shapes(model, cls(N0, **kw), delta=cls(2 * N0, **kw))
    return model


def mu_optimizer(kind: str, params, decoupled_wd: bool = False, **kw):
    """MuSGD/MuAdam/MuAdamW; decoupled_wd (mup >= its GitHub master) emulated when missing."""
    fn = {"sgd": mup.MuSGD, "adam": mup.MuAdam, "adamw": mup.MuAdamW}[kind]
    if not decoupled_wd:
        return fn(params, **kw)
    if "decoupled_wd" in inspect.signature(fn).parameters:
        return fn(params, decoupled_wd=True, **kw)
    opt = fn(params, **kw)
    for group in opt.param_groups:  # decoupled_wd=True skips mup's weight-decay scaling
        group["weight_decay"] = kw.get("weight_decay", 0.0)
    return opt


def batches(steps: int, tied: bool = False, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = (torch.randint(0, 23, (8, 5), generator=gen) if tied
             else torch.randn(16, D_IN, generator=gen, dtype=torch.float64))
        yield x, torch.randint(0, 23 if tied else D_OUT, (x.shape[0],) if not tied else (8, 5),
                               generator=gen)


def train_step(model, opt, x, y, clip=None) -> torch.Tensor:
    """One step; ``clip()`` (if given) runs between backward and step."""
    opt.zero_grad()
    out = model(x)
    loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    loss.backward()
    if clip is not None:
        clip()
    opt.step()
    return loss.detach()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


HYPER = {"sgd": dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
         "adam": dict(lr=0.01, eps=1e-6, weight_decay=1e-2),
         "adamw": dict(lr=0.01, eps=1e-6, weight_decay=1e-1)}


SEQ, VOCAB = 6, 23


class MupAttention(nn.Module):
    """nn.MultiheadAttention's parameters as bare tensors, logits scaled by attn_mult / d_head."""

    def __init__(self, d: int, heads: int, attn_mult: float = 1.0) -> None:
        super().__init__()
        self.heads, self.attn_mult = heads, attn_mult
        self.in_proj_weight = nn.Parameter(torch.randn(3 * d, d) / math.sqrt(d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.bias_k = nn.Parameter(torch.zeros(1, 1, d))
        self.bias_v = nn.Parameter(torch.zeros(1, 1, d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length, batch, d = x.shape
        head = d // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = q * (math.sqrt(self.attn_mult) / head)  # mup: 1/d instead of 1/sqrt(d)
        k = torch.cat([k, self.bias_k.expand(1, batch, d)])
        v = torch.cat([v, self.bias_v.expand(1, batch, d)])
        mask = F.pad(mask, (0, 1))  # every query also sees the appended bias key

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], batch * self.heads, head).transpose(0, 1)

        weights = torch.softmax(split(q) @ split(k).transpose(1, 2) + mask, dim=-1)
        out = (weights @ split(v)).transpose(0, 1).reshape(length, batch, d)
        return self.out_proj(out)


class MupEncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.self_attn = MupAttention(d, heads)
        self.linear1 = nn.Linear(d, 2 * d)
        self.linear2 = nn.Linear(2 * d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, mask))
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class MupTransformer(nn.Module):
    """Token ids [seq, batch] -> logits [seq, batch, vocab], mup's example layout."""

    def __init__(self, d: int, tied: bool = False, heads: int = 2, layers: int = 2,
                 output_mult: float = 2.0) -> None:
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(0.1 * torch.randn(SEQ, 1, d))  # GPT-2-style bare table
        self.layers = nn.ModuleList(MupEncoderLayer(d, heads) for _ in range(layers))
        if tied:
            self.decoder = mup.MuSharedReadout(self.encoder.weight, bias=False,
                                               output_mult=output_mult)
        else:
            self.decoder = mup.MuReadout(d, VOCAB, output_mult=output_mult)
            nn.init.zeros_(self.decoder.weight)  # mup's example zeroes its untied decoder
            nn.init.zeros_(self.decoder.bias)
        mask = torch.full((SEQ, SEQ), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.encoder(ids) + self.pos[: ids.shape[0]]
        mask = self.mask[: ids.shape[0], : ids.shape[0]].to(x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.decoder(x)


T0 = 16  # the transformer's base width; delta at 2 * T0


def make_transformer(n: int, tied: bool = False, seed: int = 0) -> MupTransformer:
    torch.manual_seed(seed)
    model = MupTransformer(n, tied).double()
    mup.set_base_shapes(model, MupTransformer(T0, tied), delta=MupTransformer(2 * T0, tied))
    return model


def token_batches(steps: int, seed: int = 1, batch: int = 4):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (SEQ + 1, batch), generator=gen)
        yield ids[:-1], ids[1:]  # next-token prediction


@dataclass
class Followed:
    """outputs: largest relative difference of the outputs on a probe batch (after every step);
    weights: of the effective weights at the end; mup's losses and clipped norms per step."""

    outputs: float
    weights: float
    imported: Any
    losses: list[float]
    norms: list[float]


def _clip_a(model: nn.Module, max_norm: float, norms: list[float]) -> None:
    norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))


def _clip_b(how: str, model: nn.Module, imported, max_norm: float) -> None:
    """Clip the imported run: "source" (imported.clip_grad_norm_, mup's norm in any gauge),
    "torch" (torch's clip on the stored gradients of the current gauge), "effective"
    (gaugeconv.clip.clip_grad_norm_, the STP norm)."""
    from gaugeconv.clip import clip_grad_norm_

    if imported is None or how == "torch":
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    elif how == "source":
        imported.clip_grad_norm_(max_norm)
    elif how == "effective":
        clip_grad_norm_(imported.gauged, max_norm)
    else:
        raise ValueError(how)


def effective_weight_gap(a: nn.Module, imported) -> float:
    """Largest relative difference between mup model a's effective weights (stored times mup's
    built-in multiplier) and the imported twin's."""
    eff = imported.gauged.effective_parameters()
    specs = imported.gauged.parameterization.specs
    return max(rel(p.detach() * specs[name].builtin, eff[name])
               for name, p in a.named_parameters())


def follow_mup(make_model, make_opt, data, gauges=(None,), import_at: int = 0, rebuild=None,
               clip: tuple[float, str] | None = None, **import_kw):
    """mup's run (model a, its optimizer, torch's clip) against an imported twin b.

    b is imported with from_mup at step ``import_at`` into ``gauges[0]`` and converted to
    ``gauges[1]`` two steps later; ``rebuild(imported)`` gives b a fresh optimizer instead of
    imported.optimizer (only at import_at 0: a fresh optimizer has no state); ``clip`` =
    (max_norm, how b clips after the import, see _clip_b).
    """
    from gaugeconv.importers import from_mup

    a, b = make_model(), make_model()
    opt_a, opt_b = make_opt(a), make_opt(b)
    probe = data[0][0]
    worst, imported, losses, norms = 0.0, None, [], []
    for t, (x, y) in enumerate(data):
        if t == import_at:
            imported = from_mup(b, opt_b, gauges[0], **import_kw)
            opt_b = imported.optimizer if rebuild is None else rebuild(imported)
        elif imported is not None and t == import_at + 2 and len(gauges) > 1:
            imported.gauged.convert(gauges[1], optimizer=opt_b)
        clip_a = clip_b = None
        if clip:
            clip_a = functools.partial(_clip_a, a, clip[0], norms)
            clip_b = functools.partial(_clip_b, clip[1], b, imported, clip[0])
        losses.append(float(train_step(a, opt_a, x, y, clip_a)))
        train_step(b, opt_b, x, y, clip_b)
        with torch.no_grad():
            worst = max(worst, rel(a(probe), b(probe)))
    return Followed(worst, effective_weight_gap(a, imported), imported, losses, norms)
