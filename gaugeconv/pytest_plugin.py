"""pytest fixtures for proving gauge equivalence on your own model (entry point ``pytest11``).

Installed with gaugeconv, active in every pytest run (``-p no:gaugeconv`` turns it off). It
adds fixtures and nothing else; importing it loads neither torch nor gaugeconv::

    import pytest

    @pytest.fixture
    def model_factory():                       # yours: a fresh model per call
        return lambda: MyModel(MyConfig(...)).double()

    def test_my_model_is_gauge_equivalent(gauged_pair):
        gauged_pair.assert_same_trajectory(steps=5)

* ``gauged_pair``: a ``gaugeconv.testing.GaugedPair`` of your ``model_factory`` fixture in two
  gauges, parametrized over ``gauge_pair`` (stp-mup, stp-rescaling, mup-rescaling), at
  ``gauge_richness`` (0.5), in the materialized form (``gauge_form``). Each of these three
  fixtures can be overridden by one of the same name in your conftest.py or test module.
* ``gaugeconv_testing``: the ``gaugeconv.testing`` module (assert_same_function,
  assert_same_trajectory, assert_converted_checkpoint).
"""

from __future__ import annotations

from typing import Any

import pytest

GAUGE_PAIRS = (("stp", "mup"), ("stp", "rescaling"), ("mup", "rescaling"))


@pytest.fixture(params=GAUGE_PAIRS, ids=[f"{a}-{b}" for a, b in GAUGE_PAIRS])
def gauge_pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The two gauges of ``gauged_pair``."""
    return request.param


@pytest.fixture
def gauge_richness() -> float:
    """The richness r of ``gauged_pair`` for a model without a gauge (0.5: muP)."""
    return 0.5


@pytest.fixture
def gauge_form() -> str:
    """The form both models of ``gauged_pair`` train in ("materialized" or "plain")."""
    return "materialized"


@pytest.fixture
def gauged_pair(model_factory: Any, gauge_pair: tuple[str, str], gauge_richness: float,
                gauge_form: str) -> Any:
    """Your ``model_factory`` in the two gauges of ``gauge_pair``, with equivalence assertions."""
    from gaugeconv.testing import GaugedPair

    return GaugedPair(model_factory, gauge_pair, gauge_richness, gauge_form)


@pytest.fixture
def gaugeconv_testing() -> Any:
    """The ``gaugeconv.testing`` module."""
    import gaugeconv.testing

    return gaugeconv.testing
