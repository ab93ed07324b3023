"""Small real or generated data sets for verification and diagnostics (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Dataset", "load_data", "token_data"]


@dataclass
class Dataset:
    x: torch.Tensor
    y: torch.Tensor
    task: str  # "classification" (y: class ids), "regression" (y: targets), "causal-lm"
    description: str

    @property
    def d_in(self) -> int:
        return self.x.shape[1]

    @property
    def d_out(self) -> int:
        return int(self.y.max()) + 1 if self.task == "classification" else self.y.shape[1]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return torch.nn.functional.cross_entropy(out, y)
        if self.task == "causal-lm":  # out: logits [batch, length, vocab]; y: token ids
            logits = out[:, :-1].reshape(-1, out.shape[-1])
            return torch.nn.functional.cross_entropy(logits, y[:, 1:].reshape(-1))
        return 0.5 * ((out - y) ** 2).sum(dim=1).mean()

    def batches(self, steps: int, batch_size: int, seed: int = 0):
        """The same sequence of minibatches for every run with the same seed."""
        gen = torch.Generator().manual_seed(seed)
        n = self.x.shape[0]
        for _ in range(steps):
            idx = torch.randint(0, n, (batch_size,), generator=gen)
            yield self.x[idx], self.y[idx]


def token_data(vocab: int, count: int = 512, length: int = 16, seed: int = 0) -> Dataset:
    """Token sequences for language models: arithmetic progressions modulo the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (count, 1), generator=gen)
    step = torch.randint(1, 4, (count, 1), generator=gen)
    ids = (start + step * torch.arange(length)) % vocab
    return Dataset(ids, ids, "causal-lm",
                   f"token progressions: {count} sequences of {length} tokens, vocabulary {vocab}")


def load_data(name: str = "digits", dtype: torch.dtype = torch.float32) -> Dataset:
    """'digits': scikit-learn's bundled 8x8 handwritten digits (1797 x 64, 10 classes),
    standardised per pixel; 'synthetic': a random tanh teacher in 32 dimensions (2048 x 4)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float64)
        x = (x - x.mean(0)) / x.std(0).clamp_min(1.0)
        y = torch.tensor(bunch.target, dtype=torch.long)
        return Dataset(
            x.to(dtype), y, "classification",
            "scikit-learn load_digits (1797 images, 64 pixels, 10 classes), standardised",
        )
    if name == "synthetic":
        gen = torch.Generator().manual_seed(1234)
        x = torch.randn(2048, 32, generator=gen, dtype=torch.float64)
        teacher = torch.randn(32, 4, generator=gen, dtype=torch.float64) / 32**0.5
        y = torch.tanh(x @ teacher) * 2
        return Dataset(
            x.to(dtype), y.to(dtype), "regression",
            "synthetic: x ~ N(0, I_32), y = 2 tanh(x T), T ~ N(0, 1/32), 2048 samples",
        )
    raise ValueError(f"unknown data set {name!r}; known: digits, synthetic")
