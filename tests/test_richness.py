import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gaugeconv import Family, Richness, RichnessError, Role, target
from gaugeconv.errors import GaugeError

rs = st.floats(0.0, 0.5)
gammas = st.floats(0.05, 20.0)
widths = st.integers(1, 1 << 16)
fans = st.integers(1, 1 << 14)


@pytest.mark.parametrize("r", [-0.01, 0.51, 1.0, float("nan"), float("inf"), True, "0.3"])
def test_richness_outside_range_is_refused(r):
    with pytest.raises(RichnessError, match="richness r="):
        Richness(r)


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan")])
def test_gamma_must_be_positive(gamma):
    with pytest.raises(RichnessError, match="gamma"):
        Richness(0.25, gamma)


@pytest.mark.parametrize("gamma", [1e-300, 1e-160, 1e160, 1e300])
def test_gamma_whose_square_leaves_float64_is_refused(gamma):
    """1e-300**2 is 0.0: the readout's variance 1/alpha**2 was a ZeroDivisionError."""
    with pytest.raises(RichnessError, match=re.escape(f"gamma={gamma!r} is too")):
        Richness(0.5, gamma)


@pytest.mark.parametrize("gamma", [1e-150, 1e150])
def test_gamma_near_the_limits_gives_finite_targets(gamma):
    """The control: just inside the range every target is a finite positive number."""
    rich = Richness(0.5, gamma)
    for role in Role:
        for family in ("sgd", "adam"):
            t = target(role, 64, 256, rich, family)
            assert all(v is None or (math.isfinite(v) and v > 0) for v in (t.variance, t.lr_factor))


def test_target_that_leaves_float64_names_gamma_and_width():
    """Inside the gamma range, a huge width can still push alpha**2 / fan_in past float64."""
    with pytest.raises(RichnessError, match=r"gamma=1e\+150 at width n=\d+ .*hidden"):
        target(Role.HIDDEN, 1, 1 << 60, Richness(0.5, 1e150), "sgd")


@given(rs, gammas, widths)
def test_alpha_is_gamma_n_to_the_r(r, gamma, n):
    assert Richness(r, gamma).alpha(n) == pytest.approx(gamma * n**r, rel=1e-14)


@given(rs, gammas, widths, fans)
def test_targets_follow_the_table(r, gamma, n, fan_in):
    rich = Richness(r, gamma)
    a = gamma * n**r
    for role in (Role.READIN, Role.HIDDEN):
        sgd = target(role, fan_in, n, rich, "sgd")
        adam = target(role, fan_in, n, rich, "adam")
        assert sgd.variance == pytest.approx(1 / fan_in)
        assert sgd.lr_factor == pytest.approx(a * a / fan_in, rel=1e-12)
        assert adam.lr_factor == pytest.approx(a / (math.sqrt(n) * fan_in), rel=1e-12)
    out = target(Role.READOUT, fan_in, n, rich, Family.SGD)
    assert out.variance == pytest.approx(1 / (a * a * fan_in), rel=1e-12)
    assert out.lr_factor == pytest.approx(1 / fan_in)
    assert target(Role.READOUT, fan_in, n, rich, Family.ADAM).lr_factor == pytest.approx(1 / fan_in)
    fixed = target(Role.FIXED, fan_in, n, rich, "adam")
    assert fixed.variance is None and fixed.lr_factor == 1.0


def test_muP_adam_targets_reproduce_tensor_programs_v():
    # TP5 Table 3 (Adam): embeddings/biases eta, hidden and readout eta/fan_in
    rich, n = Richness(0.5), 1024
    assert target("readin", 1, n, rich, "adam").lr_factor == pytest.approx(1.0)
    assert target("hidden", n, n, rich, "adam").lr_factor == pytest.approx(1 / n)
    assert target("readout", n, n, rich, "adam").lr_factor == pytest.approx(1 / n)


def test_bad_role_family_fan_in_are_named():
    with pytest.raises(GaugeError, match="unknown role 'middle'"):
        target("middle", 3, 4, Richness(0.5), "sgd")
    with pytest.raises(GaugeError, match="unknown optimizer family 'lbfgs'"):
        target("hidden", 3, 4, Richness(0.5), "lbfgs")
    with pytest.raises(GaugeError, match="fan_in=0"):
        target("hidden", 0, 4, Richness(0.5), "sgd")
