"""The two forms a gauged model can take (THEORY.md section 4: gauges share their dynamics).

Every gauge at fixed richness has the same effective dynamics, so a gauge can be carried two ways:

* ``"plain"`` (the default): the Parameters hold the effective tensors W, the forward is the
  model's own, and the gauge lives in the optimizer groups (the STP gauge's per-tensor lr, eps
  and weight decay, state in effective units) and in the recorded parameterization. Nothing of
  PyTorch's contract moves: ``module.weight`` is the Parameter, so writes, flags, hooks, ties,
  EMA helpers, quantization, FSDP and memory behave as on a plain model. Its trajectory is the
  materialized gauge's (bit for bit when every factor is a power of two, section 4).
* ``"materialized"``: the Parameters hold the stored tensors w = W / m and every read of
  ``module.weight`` gives m * w (``gaugeconv.materialized``): for trajectory proofs between
  gauges, stored-tensor checkpoints and mup-style code.

A conversion moves a model between any two (gauge, form) pairs exactly: internally the plain
form of gauge G *is* the STP gauge's materialized form, labelled G.
"""

from __future__ import annotations

from .errors import GaugeError

__all__ = ["FORMS", "PLAIN", "MATERIALIZED", "check_form"]

PLAIN, MATERIALIZED = "plain", "materialized"
FORMS = (PLAIN, MATERIALIZED)


def check_form(form: str) -> str:
    """``form`` if it names a form, else a GaugeError listing them."""
    if form not in FORMS:
        raise GaugeError(f"form={form!r}: a gauged model is 'plain' (the default) or 'materialized'")
    return form
