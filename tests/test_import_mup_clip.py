"""Clipping as mup clips, in any gauge (issue 17, item 2).

mup's example Transformer calls ``torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)`` on
mup's stored gradients. ``Imported.clip_grad_norm_`` clips by that norm in whatever gauge the
model is in (each stored gradient times m_mup / m, THEORY.md section 4). Negative controls:
torch's clip on another gauge's stored gradients, and gaugeconv's effective-norm clip, which
differ from mup's norm (the latter even in mup's own gauge). Reference: the real MuAdam /
MuSGD run with torch's clip, float64.
"""

from __future__ import annotations

import mup
import pytest
import torch

from gaugeconv.importers import from_mup
from tests.mup_models import follow_mup, make_transformer, token_batches

N = 48  # width_mult 3 over the base 16: the readout's multiplier 2/3 is not a power of two
MAX_NORM = 0.25  # mup's example

OPTIMIZERS = {
    "adam": lambda m: mup.MuAdam(m.parameters(), lr=3e-3, eps=1e-7),
    "sgd": lambda m: mup.MuSGD(m.parameters(), lr=0.05, momentum=0.9),
}


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_clip_by_mups_norm_in_any_gauge(kind):
    data = list(token_batches(6))

    def follow(gauges, how, import_at=0):
        return follow_mup(lambda: make_transformer(N), OPTIMIZERS[kind], data, gauges,
                          import_at, clip=(MAX_NORM, how))

    own = follow([None], "source")
    assert min(own.norms) > 2 * MAX_NORM  # the clip acts at every step
    assert own.outputs == 0.0 and own.weights == 0.0  # mup's gauge: torch's clip, bit for bit
    for gauges in (["stp"], ["stp", "rescaling"]):
        run = follow(gauges, "source", import_at=2)
        assert run.outputs <= 1e-12 and run.weights <= 1e-12, (gauges, run.outputs, run.weights)
    # negative controls: torch's clip on STP's stored (= effective) gradients, and gaugeconv's
    # effective-norm clip, even in mup's own gauge, leave mup's trajectory
    assert follow(["stp"], "torch").outputs > 1e-4
    assert follow([None], "effective").outputs > 1e-4
    assert follow([None], "torch").outputs == 0.0  # in mup's gauge torch's clip *is* mup's


def test_grad_norm_is_mups_norm_after_conversion():
    model, twin = make_transformer(N), make_transformer(N)
    imp = from_mup(twin, OPTIMIZERS["adam"](twin), "stp")
    ids, target = next(token_batches(1))
    for m in (model, twin):
        out = m(ids)
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1)) \
            .backward()
    want = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert imp.grad_norm().item() == pytest.approx(want.item(), rel=1e-14)
    stp = torch.nn.utils.get_total_norm([p.grad for p in twin.parameters()])
    assert abs(stp.item() / want.item() - 1) > 1e-3  # the STP norm is another number
