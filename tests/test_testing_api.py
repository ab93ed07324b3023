"""gaugeconv.testing and its pytest plugin, used the way a user's own test suite uses them."""

import pytest
import torch

import gaugeconv as gc
from gaugeconv.testing import (
    GaugedPair,
    assert_same_function,
    assert_same_trajectory,
    gauged_copy,
)
from tests.hf.zoo import build

pytest_plugins = ["pytester"]


def test_same_function_passes_and_a_different_model_fails_with_a_table():
    pair = GaugedPair(lambda: build("llama", torch.float64), ("stp", "rescaling"))
    assert pair.assert_same_function() <= 1e-12
    other = build("llama", torch.float64, seed=1)
    with pytest.raises(AssertionError, match=r"compute different functions") as err:
        assert_same_function(pair.a, other, {"input_ids": torch.tensor([[3, 4, 5, 6]])})
    assert "rel diff" in str(err.value) and "[1, 4, 61]" in str(err.value)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_same_trajectory_over_three_gauges_and_the_controls(arch):
    reports = assert_same_trajectory(lambda: build(arch, torch.float64), steps=3)
    assert [r.b.split()[0] for r in reports] == ["mup", "rescaling"]
    assert all(max(r.max_rel_diff.values()) <= 1e-12 for r in reports)
    for control in ("eps", "multiplier"):  # broken on purpose: the assertion must see it
        (bad,) = assert_same_trajectory(lambda: build(arch, torch.float64), ("stp", "mup"),
                                        steps=3, negative_control=control)
        assert not bad.equivalent and bad.negative_control["kind"] == control


def test_a_failure_carries_the_per_step_table():
    with pytest.raises(AssertionError) as err:
        assert_same_trajectory(lambda: build("gpt2", torch.float64), ("stp", "mup"), steps=2,
                               tolerance=1e-30)
    text = str(err.value)
    assert "rel logits" in text and "verdict: NOT EQUIVALENT" in text and "fails:" in text
    # a negative control that cannot bite is an error too: at tolerance 1 nothing fails
    with pytest.raises(AssertionError, match="did not make the comparison fail"):
        assert_same_trajectory(lambda: build("gpt2", torch.float64), ("stp", "mup"), steps=2,
                               tolerance=1.0, negative_control="eps")


def test_a_gauged_model_of_the_core_library_with_its_own_batches_and_loss():
    """Width 64: every factor between the gauges is a power of two, so bit for bit."""
    gm = gc.build_mlp(16, 5, width=64, depth=3, richness=0.5, gauge="stp", optimizer="adam",
                      dtype=torch.float64, seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 16, generator=gen, dtype=torch.float64),
                torch.randint(0, 5, (8,), generator=gen)) for _ in range(4)]
    reports = assert_same_trajectory(gm, batches=batches, steps=6,
                                     loss=torch.nn.functional.cross_entropy)
    assert all(r.bit_identical and r.expected_bit_identical for r in reports)
    assert gm.gauge.name == "stp" and gm.form == "plain"  # the source is left as it was
    with pytest.raises(gc.GaugeError, match="loss= is needed"):
        assert_same_trajectory(gm, batches=batches, steps=2)


def test_gauged_copy_leaves_the_source_alone():
    import gaugeconv.hf as gh

    model = build("bert", torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy, handle = gauged_copy(model, "mup")
    assert handle.form == "materialized" and handle.gauge.name == "mup"
    assert gh.gauge_config_of(model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert copy is not model


USER_TESTS = '''
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel


@pytest.fixture
def model_factory():
    config = GPT2Config(n_embd=24, n_layer=1, n_head=4, vocab_size=50, n_positions=16,
                        bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return lambda: GPT2LMHeadModel(config).double()


def test_my_model_is_gauge_equivalent(gauged_pair):
    gauged_pair.assert_same_trajectory(steps=2)


def test_the_check_can_fail(gauged_pair):
    gauged_pair.assert_same_trajectory(steps=2, negative_control="multiplier")


def test_a_too_strict_tolerance_fails(gauged_pair):
    gauged_pair.assert_same_trajectory(steps=2, tolerance=1e-30)
'''


def test_the_pytest_plugin_on_a_user_test_file(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    # 3 gauge pairs x 3 tests; the too-strict one fails, showing the per-step table
    result.assert_outcomes(passed=6, failed=3)
    result.stdout.fnmatch_lines(["*rel logits*", "*verdict: NOT EQUIVALENT*"])
    for pair in ("stp-mup", "stp-rescaling", "mup-rescaling"):
        assert f"test_a_too_strict_tolerance_fails[{pair}]" in result.stdout.str()


def test_the_plugin_asks_for_the_users_factory(pytester):
    pytester.makepyfile(test_user="def test_x(gauged_pair):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*fixture 'model_factory' not found*"])
