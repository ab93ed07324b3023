import pytest
import torch

from gaugeconv import build_mlp


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """The machine's 2 cores are shared: one thread is ~50x faster for tiny models. A module
    uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_mlp():
    """The reference MLP; materialized by default: these tests are about the stored tensors,
    multipliers and optimizer state of each gauge (the plain form's own tests say form="plain")."""

    def make(**kw):
        args = dict(d_in=16, d_out=5, width=64, depth=3, richness=0.5, gauge="stp",
                    optimizer="sgd", dtype=torch.float64, seed=0, form="materialized")
        args.update(kw)
        return build_mlp(**args)

    return make
