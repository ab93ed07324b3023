"""Importers: take over models and optimizers set up by other muP tools, exactly.

* ``from_mup(model, optimizer, gauge=None)``: microsoft/mup (set_base_shapes, MuReadout,
  MuAdam/MuAdamW/MuSGD), fresh or mid-run with optimizer state.
* ``from_mupify(model, param, ...)``: the conventions of the seed author's mupify at its five
  named points (ntp, ntp-lr, mup, mup-lr, mfp).
"""

from .core import EPS_CONVENTIONS, Imported, StoredHypers
from .mup import from_mup, mup_specs
from .mupify import from_mupify, mupify_layers

__all__ = ["from_mup", "mup_specs", "from_mupify", "mupify_layers", "Imported",
           "StoredHypers", "EPS_CONVENTIONS"]
