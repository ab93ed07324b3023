"""Importers: take over models and optimizers set up by other muP tools, exactly.

* ``from_mup(model, optimizer, gauge=None)``: microsoft/mup (set_base_shapes, MuReadout,
  MuAdam/MuAdamW/MuSGD), fresh or mid-run with optimizer state.
* ``from_mupify(model, param, ...)``: the conventions of the seed author's mupify at its five
  named points (ntp, ntp-lr, mup, mup-lr, mfp).

Names are imported on first use.
"""

from .._lazy import lazy_attributes, shadow_submodules

_WHERE = {
    **dict.fromkeys(["EPS_CONVENTIONS", "Imported", "StoredHypers"], ".core"),
    **dict.fromkeys(["from_mup", "mup_specs"], ".mup"),
    **dict.fromkeys(["from_mupify", "mupify_layers"], ".mupify"),
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
shadow_submodules(__name__, _WHERE)  # none today; any NAME in .NAME later
