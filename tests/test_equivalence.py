"""Trajectory matching on the reference MLP: every pair of gauges, three richnesses, two widths."""

import itertools

import pytest

from gaugeconv import VerifyConfig, verify

PAIRS = list(itertools.combinations(["stp", "mup", "rescaling"], 2))
OPTIMIZERS = ["sgd", "adamw", "adam"]


def SLOW(*values):  # noqa: N802 - reads like the value it marks
    """A parameter of the full run only: the quick loop (-m "not slow") keeps r = 1/2 at width
    64 for every optimizer, CI runs every r and width."""
    return pytest.param(*values, marks=pytest.mark.slow)


def _check(dtype, steps, tol, **kw):
    for (a, b), convert_at in itertools.product(PAIRS, [None, steps // 2]):
        rep = verify(VerifyConfig(from_gauge=a, to_gauge=b, dtype=dtype, steps=steps,
                                  convert_at=convert_at, **kw))
        assert rep.equivalent and rep.tolerance == tol, (a, b, convert_at, rep.max_rel_diff)
        assert max(rep.max_rel_diff.values()) <= tol
        assert rep.steps == steps
        # the runs really trained: otherwise agreement would prove nothing
        assert rep.per_step[-1]["loss_a"] < 0.9 * rep.per_step[0]["loss_a"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("r", [SLOW(0.0), SLOW(0.25), 0.5])
@pytest.mark.parametrize("width", [64, SLOW(512)])
def test_float64_50_steps(optimizer, r, width):
    # SGD: momentum 0.9 + coupled weight decay; AdamW: eps + decoupled; Adam: coupled
    _check("float64", 50, 1e-10, optimizer=optimizer, richness=r, width=width,
           weight_decay=1e-2, eps=1e-8)


@pytest.mark.slow  # float32 agreement stays in the quick loop: the power-of-two test below
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("r", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("width", [64, 512])
def test_float32_20_steps(optimizer, r, width):
    _check("float32", 20, 1e-4, optimizer=optimizer, richness=r, width=width, weight_decay=1e-2)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("r,width", [SLOW(0.0, 256), SLOW(0.25, 256), (0.5, 64),
                                     SLOW(0.5, 1024), SLOW(0.25, 4096)])
def test_power_of_two_factors_are_bit_identical_in_float32(optimizer, r, width):
    # widths whose n^r, sqrt(n) and sqrt(fan_in) are powers of two (d = 64)
    pairs = PAIRS
    steps = 6 if width == 4096 else 20
    for (a, b), convert_at in itertools.product(pairs, [None, 3]):
        rep = verify(VerifyConfig(richness=r, from_gauge=a, to_gauge=b, optimizer=optimizer,
                                  width=width, dtype="float32", steps=steps, convert_at=convert_at,
                                  depth=3 if width < 4096 else 2))
        assert rep.bit_identical, (a, b, convert_at, rep.max_rel_diff)
        assert rep.max_rel_diff == {"loss": 0.0, "output": 0.0, "weights": 0.0}


def test_non_power_of_two_is_not_bit_identical_but_rounding_level():
    rep = verify(VerifyConfig(richness=0.25, from_gauge="stp", to_gauge="rescaling",
                              optimizer="adamw", width=96, dtype="float32", steps=20))
    assert not rep.bit_identical
    assert 0 < rep.max_rel_diff["weights"] < 1e-5


@pytest.mark.parametrize("convert_at", [None, 5])
@pytest.mark.parametrize("eps", [1e-12, 1e-8])
def test_negative_control_eps_rule_off_is_detected(convert_at, eps):
    # THEORY.md section 4: Adam, width 256, r = 1/2, eps = 1e-12 -> ~1.6e-3 after five steps
    rep = verify(VerifyConfig(richness=0.5, from_gauge="stp", to_gauge="mup", optimizer="adamw",
                              width=256, eps=eps, steps=20, negative_control="eps",
                              convert_at=convert_at))
    assert not rep.equivalent
    assert rep.max_rel_diff["weights"] > 1e-6


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_negative_control_lr_off_by_one_power_is_detected(optimizer):
    rep = verify(VerifyConfig(richness=0.25, from_gauge="stp", to_gauge="rescaling",
                              optimizer=optimizer, width=128, steps=10, negative_control="lr"))
    assert not rep.equivalent
    assert rep.max_rel_diff["loss"] > 1e-3


def test_named_points_verify_and_a_chain_of_conversions():
    rep = verify(VerifyConfig(from_gauge="ntp", to_gauge="ntp-lr", steps=20))
    assert rep.config["richness"] == 0.0 and rep.equivalent
    rep = verify(VerifyConfig(from_gauge="mup-lr", to_gauge="mfp", optimizer="adamw", steps=30,
                              width=200, convert_at=10, then=((20, "mup"),)))
    assert rep.config["richness"] == 0.5 and rep.equivalent
