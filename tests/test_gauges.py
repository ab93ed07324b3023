import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gaugeconv import (
    NAMED_POINTS,
    Custom,
    GaugeError,
    Parameterization,
    Richness,
    Role,
    TensorSpec,
    UnknownGaugeError,
    get_gauge,
    resolve_point,
)


def mlp_specs(n, d=10, k=3):
    return [
        TensorSpec("in", Role.READIN, d),
        TensorSpec("in.bias", Role.READIN, 1, init="zeros"),
        TensorSpec("hid", Role.HIDDEN, n),
        TensorSpec("out", Role.READOUT, n),
        TensorSpec("out.bias", Role.FIXED, 1, init="zeros"),
    ]


def point(name, n, family="sgd", d=10):
    gauge, r = resolve_point(name)
    return Parameterization(mlp_specs(n, d), Richness(r), gauge, family, n).plans


def exponents(name, family="sgd", n1=256, n2=4096):
    """abc exponents W = n^-a w, w ~ N(0, n^-2b), lr = eta n^-c fitted between two widths."""
    p1, p2 = point(name, n1, family), point(name, n2, family)
    log = math.log(n2 / n1)
    out = {}
    for t in ("in", "hid", "out"):
        a = -math.log(p2[t].multiplier / p1[t].multiplier) / log
        b = -math.log(p2[t].init_std / p1[t].init_std) / log
        c = -math.log(p2[t].lr_factor / p1[t].lr_factor) / log
        out[t] = (round(a, 12), round(b, 12), round(c, 12))
    return out


def test_mup_gauge_is_yang_hu_abc():
    # Yang & Hu: a = (-1/2, 0, 1/2), b = 1/2, c = 0 (SGD)
    assert exponents("mup") == {"in": (-0.5, 0.5, 0), "hid": (0, 0.5, 0), "out": (0.5, 0.5, 0)}


def test_mup_lr_is_tensor_programs_v_table_3_sgd():
    # init var 1/fan_in, 1/fan_in, 1/fan_in^2; lr eta*fan_out (up to 1/d), eta, eta/fan_in
    n, d = 512, 10
    p = point("mup-lr", n, "sgd", d)
    assert all(x.multiplier == 1 for x in p.values())
    assert p["in"].init_std ** 2 == pytest.approx(1 / d)
    assert p["hid"].init_std ** 2 == pytest.approx(1 / n)
    assert p["out"].init_std ** 2 == pytest.approx(1 / n**2)
    assert p["in"].lr_factor == pytest.approx(n / d)
    assert p["hid"].lr_factor == pytest.approx(1.0)
    assert p["out"].lr_factor == pytest.approx(1 / n)
    assert p["in.bias"].lr_factor == pytest.approx(n)  # biases: eta * fan_out


def test_mup_lr_adam_is_tensor_programs_v_table_3_adam():
    n, d = 512, 10
    p = point("mup-lr", n, "adam", d)
    assert p["in"].lr_factor == pytest.approx(1 / d)  # eta, up to the constant 1/d
    assert p["in.bias"].lr_factor == pytest.approx(1.0)
    assert p["hid"].lr_factor == pytest.approx(1 / n)
    assert p["out"].lr_factor == pytest.approx(1 / n)


def test_ntp_is_ntk_parameterization():
    n, d = 300, 10
    p = point("ntp", n, "sgd", d)
    assert p["in"].multiplier == pytest.approx(1 / math.sqrt(d))
    assert p["hid"].multiplier == pytest.approx(1 / math.sqrt(n))
    assert p["out"].multiplier == pytest.approx(1 / math.sqrt(n))
    for t in ("in", "hid", "out"):
        assert p[t].init_std == pytest.approx(1.0)
        assert p[t].lr_factor == pytest.approx(1.0)  # one global lr (alpha = 1)


def test_ntp_lr_is_standard_init_with_per_layer_lrs():
    n, d = 300, 10
    p = point("ntp-lr", n, "sgd", d)
    assert p["out"].init_std == pytest.approx(1 / math.sqrt(n))
    assert p["hid"].lr_factor == pytest.approx(1 / n)
    assert p["in"].lr_factor == pytest.approx(1 / d)


def test_mfp_is_mean_field_with_gamma0():
    n = 1024
    p = point("mfp", n)
    assert p["out"].multiplier == pytest.approx(1 / n)  # 1/(alpha sqrt(n)), alpha = sqrt(n)
    for t in ("in", "hid", "out"):
        assert p[t].init_std == pytest.approx(1.0)
        assert p[t].lr_factor == pytest.approx(n)  # eta * alpha^2 = eta * gamma0^2 * n


@given(st.floats(0, 0.5), st.floats(0.1, 10), st.integers(4, 8192))
def test_rescaling_gauge_sgd_has_one_global_lr(r, gamma, n):
    p = Parameterization(mlp_specs(n), Richness(r, gamma), "rescaling", "sgd", n).plans
    alpha2 = (gamma * n**r) ** 2
    for t in ("in", "hid", "out"):
        assert p[t].lr_factor == pytest.approx(alpha2, rel=1e-12)
        assert p[t].init_std == pytest.approx(1.0, rel=1e-12)


@given(st.floats(0, 0.5), st.floats(0.1, 10), st.integers(4, 8192), st.sampled_from(["sgd", "adam"]))
def test_mup_gauge_has_one_global_lr_and_gauges_share_targets(r, gamma, n, family):
    plans = {
        g: Parameterization(mlp_specs(n), Richness(r, gamma), g, family, n).plans
        for g in ("stp", "mup", "rescaling")
    }
    for name in plans["mup"]:
        assert plans["mup"][name].lr_factor == pytest.approx(1.0, rel=1e-12)
        # the effective init and step are gauge invariant
        k = 1 if family == "sgd" else 0
        for g in ("stp", "rescaling"):
            a, b = plans[g][name], plans["mup"][name]
            assert a.target == b.target
            if a.init_std is not None:
                assert a.init_std * a.multiplier == pytest.approx(b.init_std * b.multiplier)
            assert a.lr_factor * a.multiplier ** (1 + k) == pytest.approx(
                b.lr_factor * b.multiplier ** (1 + k), rel=1e-12
            )


def test_custom_gauge_and_scales():
    n = 64
    specs = mlp_specs(n)
    m = {"in": 2.0, "in.bias": 0.5, "hid": 3.0, "out": 0.25, "out.bias": 1.0}
    stp = Parameterization(specs, Richness(0.3), "stp", "adam", n)
    custom = stp.with_gauge(Custom(m))
    assert custom.multipliers == m
    assert stp.scales_to(custom) == m
    with pytest.raises(GaugeError, match="no multiplier for 'in.bias'"):
        _ = stp.with_gauge(Custom({"in": 1.0})).plans
    with pytest.raises(GaugeError, match="multiplier -1.0 of 'in'"):
        _ = stp.with_gauge(Custom(lambda spec: -1.0)).plans


def test_unknown_gauge_names_the_gauge_and_the_choices():
    with pytest.raises(UnknownGaugeError, match="unknown gauge 'ntk-ish'.*stp, mup, rescaling"):
        get_gauge("ntk-ish")


def test_named_points_fix_richness():
    for name, p in NAMED_POINTS.items():
        gauge, r = resolve_point(name)
        assert (gauge.name, r) == (p.gauge, p.r)
    with pytest.raises(GaugeError, match="named point 'mfp' has r=0.5"):
        resolve_point("mfp", 0.25)
    assert resolve_point("mup", 0.25)[1] == 0.25  # the gauge name keeps an explicit r


def test_scales_refuse_a_change_of_richness():
    a = Parameterization(mlp_specs(64), Richness(0.5), "stp", "sgd", 64)
    b = Parameterization(mlp_specs(64), Richness(0.25), "mup", "sgd", 64)
    with pytest.raises(GaugeError, match="keeps the richness fixed"):
        a.scales_to(b)
