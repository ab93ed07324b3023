"""Classify a parameterization: in the richness family or not, and if so which r and gauge.

Input: per-role abc exponents (W = n^-a w, w ~ N(0, n^-2b), lr = eta n^-c), or multipliers,
stored init stds and learning rates measured at two or more widths (exponents fitted, constants
gamma and eta read off), or a factory width -> GaugedModel. The gauge-invariant exponents are
init a + b and step 2a + c (SGD) or a + c (Adam); the family at r requires (THEORY.md s. 5):

=========  =========  ================  ================
role       a + b      2a + c (SGD)      a + c (Adam)
=========  =========  ================  ================
readin     0          -2r               1/2 - r
hidden     1/2        1 - 2r            3/2 - r
readout    1/2 + r    1                 1
=========  =========  ================  ================

At r = 1/2 a readout initialised smaller than 1/2 + r (zero init, microsoft/mup's
``readout_zero_init``, or its readout without ``rescale_params``) still gives muP and is
accepted with a note. mup's default path (``set_base_shapes(rescale_params=True)``) keeps the
stored readout std constant behind MuReadout's 1/width_mult multiplier: a + b = 1 + 0, exactly
muP's readout init. A parameterization outside the family is reported with the desideratum that
fails per layer, and the nearest member (same multipliers, corrected init and learning-rate
exponents).

From measured values, gamma is read twice: from the readout's effective init
(v = 1/(gamma^2 n^2r fan_in)) and from the readin and hidden learning rates relative to the
readout's (SGD: lambda = eta alpha^2/fan_in, Adam: eta alpha/(sqrt(n) fan_in)). Constant factors
that differ between init and learning rates (mup's base widths, torch's 1/sqrt(3) init) make
them disagree; the classification then gives both and says how far a parameterization rebuilt
from the init's gamma would be off. NaN, infinite, non-positive or missing values, and values
that do not follow a power of the width, are refused with an error that names them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import GaugeError
from ..gauges import NAMED_POINTS
from ..richness import Family

__all__ = ["classify_abc", "classify_measured", "classify_factory", "abc_of", "gamma_from_lrs",
           "PRESETS", "Classification"]

ROLES = ("readin", "hidden", "readout")
TOL = 1e-6


@dataclass
class Classification:
    in_family: bool
    richness: float | None
    gauges: list[str]  # matching gauges (several coincide at special points)
    named_point: str | None
    gamma: float | None
    eta: float | None
    abc: dict[str, list[float]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    nearest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    gamma_lr: dict[str, float] | None = None  # gamma implied by each role's learning rate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _targets(r: float, family: Family) -> dict[str, tuple[float, float]]:
    if family is Family.SGD:
        return {"readin": (0.0, -2 * r), "hidden": (0.5, 1 - 2 * r), "readout": (0.5 + r, 1.0)}
    return {"readin": (0.0, 0.5 - r), "hidden": (0.5, 1.5 - r), "readout": (0.5 + r, 1.0)}


def _step(a: float, c: float, family: Family) -> float:
    return (2 * a + c) if family is Family.SGD else (a + c)


def _r_from_steps(abc, family: Family) -> list[float]:
    k = 2 if family is Family.SGD else 1
    a_in, _, c_in = abc["readin"]
    a_h, _, c_h = abc["hidden"]
    s_in, s_h = _step(a_in, c_in, family), _step(a_h, c_h, family)
    if family is Family.SGD:
        return [-s_in / k, (1 - s_h) / k]
    return [0.5 - s_in, 1.5 - s_h]


def _gauges(abc, r: float, family: Family) -> list[str]:
    names = []
    if all(abs(abc[x][0]) < TOL for x in ROLES):
        names.append("stp")
    if all(abs(abc[x][2]) < TOL for x in ROLES):
        names.append("mup")
    resc = {"readin": 0.0, "hidden": 0.5, "readout": 0.5 + r}
    if all(abs(abc[x][0] - resc[x]) < TOL for x in ROLES):
        names.append("rescaling")
    return names or ["custom"]


def _failure(role: str, kind: str, have: float, want: float) -> dict[str, Any]:
    if kind == "init":
        if role == "readout":
            d = "D1" if have < want else "richness"
            why = ("the output at init grows relative to its updates"
                   if have < want else "the readout init is smaller than this r needs")
        else:
            d = "D0"
            why = ("the representation blows up with width at init" if have < want
                   else "the representation vanishes with width at init")
    else:
        if have < want:
            d = "D1"
            why = "its update grows with width: the output change per step blows up"
        else:
            d = "D2"
            why = "its update vanishes with width: the layer stops learning"
    return {"role": role, "desideratum": d, "quantity": f"{kind} exponent",
            "have": have, "expected": want, "why": why}


def classify_abc(abc: Mapping[str, Sequence[float]], optimizer: str = "sgd",
                 gamma: float | None = None, eta: float | None = None) -> Classification:
    """Classify per-role exponents {role: (a, b, c)} for an optimizer family."""
    family = Family.parse(optimizer)
    abc = _checked_abc(abc)
    r_init = abc["readout"][0] + abc["readout"][1] - 0.5
    r_steps = sum(_r_from_steps(abc, family)) / 2
    # reference r: the readout init's (the usual reading of a setup), or the steps' when that
    # explains more of it; clamped to [0, 1/2]
    candidates = [min(max(x, 0.0), 0.5) for x in (r_init, r_steps)]
    scored = [(len(_failures(abc, family, r)[0]), i, r) for i, r in enumerate(candidates)]
    _, _, r = min(scored)
    failures, notes = _failures(abc, family, r)
    in_family = not failures
    nearest = None
    if not in_family:  # keep the multipliers (a), correct b and c to the member at r
        t = _targets(r, family)
        k = 2 if family is Family.SGD else 1
        fixed = {role: [abc[role][0], t[role][0] - abc[role][0], t[role][1] - k * abc[role][0]]
                 for role in ROLES}
        nearest = {"richness": r, "abc": fixed, "gauges": _gauges(fixed, r, family),
                   "named_point": _point(r, _gauges(fixed, r, family))}
    gauges = _gauges(abc, r, family) if in_family else []
    point = _point(r, gauges) if in_family else None
    return Classification(in_family, r if in_family else None, gauges, point, gamma, eta,
                          abc, failures, nearest, notes)


def _checked_abc(abc: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    if not isinstance(abc, Mapping):
        raise GaugeError(f"abc exponents must be a mapping role -> (a, b, c), not {abc!r}")
    missing = [role for role in ROLES if role not in abc]
    if missing:
        raise GaugeError(f"abc exponents lack role(s) {missing}; give readin, hidden, readout")
    extra = sorted(set(abc) - set(ROLES))
    if extra:
        raise GaugeError(f"unknown role(s) {extra} in the abc exponents; known: {list(ROLES)}")
    out = {}
    for role in ROLES:
        values = abc[role]
        if isinstance(values, (str, bytes)) or len(values) != 3:
            raise GaugeError(f"{role}: abc needs three numbers (a, b, c), got {values!r}")
        nums = []
        for x in values:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise GaugeError(f"{role}: abc exponent {x!r} is not a finite number")
            nums.append(float(x))
        out[role] = nums
    return out


def _point(r: float, gauges: list[str]) -> str | None:
    for name, p in NAMED_POINTS.items():
        if abs(p.r - r) < TOL and p.gauge in gauges:
            return name
    return None


def _failures(abc, family: Family, r: float) -> tuple[list[dict[str, Any]], list[str]]:
    failures, notes = [], []
    targets = _targets(r, family)
    for role in ROLES:
        a, b, c = abc[role]
        init_want, step_want = targets[role]
        init_have, step_have = a + b, _step(a, c, family)
        if abs(init_have - init_want) > TOL:
            if role == "readout" and abs(r - 0.5) < TOL and init_have > init_want:
                notes.append("readout initialised smaller than 1/(alpha^2 fan_in) (e.g. zero "
                             "init, or mup's readout without rescale_params): still muP at "
                             "r = 1/2")
            else:
                failures.append(_failure(role, "init", init_have, init_want))
        if abs(step_have - step_want) > TOL:
            failures.append(_failure(role, "step", step_have, step_want))
    return failures, notes


_KEYS = ("multiplier", "init_std", "lr")


def _checked_measured(measured: Any) -> dict[int, dict[str, dict[str, float]]]:
    if not isinstance(measured, Mapping):
        raise GaugeError("measured values must be a mapping {width: {role: {...}}}")
    out: dict[int, dict[str, dict[str, float]]] = {}
    for w, per_role in measured.items():
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise GaugeError(f"width {w!r} must be a positive integer")
        if not isinstance(per_role, Mapping):
            raise GaugeError(f"width {w}: expected {{role: {{...}}}}, got {per_role!r}")
        out[w] = {}
        for role in ROLES:
            if role not in per_role:
                raise GaugeError(f"width {w}: no values for role {role!r}")
            vals = per_role[role]
            entry = {}
            for key in (*_KEYS, "fan_in"):
                if key not in vals:
                    if key == "fan_in" and role != "readout":
                        continue
                    raise GaugeError(f"width {w}, {role}: {key!r} is missing")
                x = vals[key]
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise GaugeError(f"width {w}, {role}: {key}={x!r} is not a finite number")
                if x <= 0:
                    why = (" (a zero-initialised readout has no init exponent to fit: give its "
                           "abc instead)" if key == "init_std" else "")
                    raise GaugeError(f"width {w}, {role}: {key}={x!r} must be > 0{why}")
                entry[key] = float(x)
            out[w][role] = entry
    if len(out) < 2:
        raise GaugeError("measured values at two or more widths are needed")
    return out


def abc_of(measured: Mapping[int, Mapping[str, Mapping[str, float]]], optimizer: str = "sgd"
           ) -> tuple[dict[str, list[float]], float | None, float | None]:
    """Fit (a, b, c) per role from {width: {role: {multiplier, init_std, lr, fan_in}}}.

    Also reads off gamma (from the readout's effective init) and eta (from its effective step).
    Values that are not a power of the width (log-log residual above 1e-6) are refused.
    """
    family = Family.parse(optimizer)
    measured = _checked_measured(measured)
    widths = sorted(measured)
    logs = [math.log(w) for w in widths]

    def slope(values, what):
        ys = [math.log(v) for v in values]
        mx, my = sum(logs) / len(logs), sum(ys) / len(ys)
        k = sum((x - mx) * (y - my) for x, y in zip(logs, ys)) / sum((x - mx) ** 2 for x in logs)
        worst = max(abs(y - my - k * (x - mx)) for x, y in zip(logs, ys))
        if worst > 1e-6:
            raise GaugeError(
                f"{what} at widths {widths} is not a power of the width (log residual "
                f"{worst:.3g}): the measurements are inconsistent with width exponents"
            )
        return k

    abc = {}
    for role in ROLES:
        fits = [slope([measured[w][role][key] for w in widths], f"{role} {key}")
                for key in _KEYS]
        abc[role] = [round(-x, 9) + 0.0 for x in fits]
    # constants from the largest width: readout v = 1/(gamma^2 n^2r fan_in), lambda = eta/fan_in
    n = widths[-1]
    out = measured[n]["readout"]
    k = 1 if family is Family.SGD else 0
    eff_std = out["multiplier"] * out["init_std"]
    eta = out["lr"] * out["multiplier"] ** (1 + k) * out["fan_in"]
    r_init = abc["readout"][0] + abc["readout"][1] - 0.5
    gamma = 1.0 / (eff_std * math.sqrt(out["fan_in"]) * n ** max(r_init, 0.0))
    return abc, gamma, eta


def gamma_from_lrs(measured, optimizer: str, eta: float, r: float) -> dict[str, float]:
    """gamma implied by the readin and hidden learning rates at the largest width (section 2)."""
    family = Family.parse(optimizer)
    n = max(measured)
    k = 1 if family is Family.SGD else 0
    out = {}
    for role in ("readin", "hidden"):
        vals = measured[n][role]
        if "fan_in" not in vals:
            continue
        lam = vals["lr"] * vals["multiplier"] ** (1 + k)
        if family is Family.SGD:
            alpha = math.sqrt(lam * vals["fan_in"] / eta)
        else:
            alpha = lam * math.sqrt(n) * vals["fan_in"] / eta
        out[role] = alpha / n**r
    return out


def classify_measured(measured, optimizer: str = "sgd") -> Classification:
    abc, gamma, eta = abc_of(measured, optimizer)
    result = classify_abc(abc, optimizer, gamma=gamma, eta=eta)
    r = result.richness if result.richness is not None else (result.nearest or {}).get("richness")
    if r is None:
        return result
    lr_gammas = gamma_from_lrs(_checked_measured(measured), optimizer, eta, r)
    result.gamma_lr = lr_gammas
    off = {role: g for role, g in lr_gammas.items()
           if not math.isclose(g, gamma, rel_tol=1e-6)}
    if off:
        power = 2 if Family.parse(optimizer) is Family.SGD else 1
        parts = ", ".join(f"{role} {g:.4g} (a rebuild from gamma {gamma:.4g} would give it "
                          f"{(gamma / g) ** power:.3g}x its learning rate)"
                          for role, g in off.items())
        result.notes.append(
            f"init and learning rates imply different gamma: the readout init gives "
            f"{gamma:.4g}, the learning rates give {parts}; the setup carries per-tensor "
            "constants (THEORY.md section 6), so no single gamma describes it"
        )
    return result


def classify_factory(factory: Callable[[int], Any], widths: Sequence[int] = (256, 1024),
                     lr: float = 1.0) -> Classification:
    """Classify a factory width -> GaugedModel (its multipliers, init stds and groups' lrs)."""
    measured = {}
    family = None
    for w in widths:
        gm = factory(w)
        family = gm.parameterization.family
        per_role: dict[str, dict[str, float]] = {}
        for plan in gm.parameterization.plans.values():  # the named gauge's, in either form
            role = plan.spec.role.value
            if role in ROLES and plan.spec.init == "normal" and role not in per_role:
                per_role[role] = {"multiplier": plan.multiplier, "init_std": plan.init_std,
                                  "lr": lr * plan.lr_factor, "fan_in": plan.spec.fan_in}
        measured[w] = per_role
    return classify_measured(measured, family.value)


# abc exponents of well-known setups (per role: a, b, c), with their optimizer family
PRESETS: dict[str, tuple[str, dict[str, tuple[float, float, float]]]] = {
    "sp": ("sgd", {"readin": (0, 0, 0), "hidden": (0, 0.5, 0), "readout": (0, 0.5, 0)}),
    "sp-adam": ("adam", {"readin": (0, 0, 0), "hidden": (0, 0.5, 0), "readout": (0, 0.5, 0)}),
    "ntp": ("sgd", {"readin": (0, 0, 0), "hidden": (0.5, 0, 0), "readout": (0.5, 0, 0)}),
    "ntp-lr": ("sgd", {"readin": (0, 0, 0), "hidden": (0, 0.5, 1), "readout": (0, 0.5, 1)}),
    "mup": ("sgd", {"readin": (-0.5, 0.5, 0), "hidden": (0, 0.5, 0), "readout": (0.5, 0.5, 0)}),
    "mup-lr": ("sgd", {"readin": (0, 0, -1), "hidden": (0, 0.5, 0), "readout": (0, 1, 1)}),
    "mfp": ("sgd", {"readin": (0, 0, -1), "hidden": (0.5, 0, -1), "readout": (1, 0, -1)}),
    # microsoft/mup: MuReadout divides its input by the width multiplier (a = 1); its default
    # set_base_shapes(rescale_params=True) multiplies the readout's default init by
    # sqrt(width_mult), keeping the stored std constant (b = 0): exactly muP's readout init
    "mup-library-adam": ("adam", {"readin": (0, 0, 0), "hidden": (0, 0.5, 1),
                                  "readout": (1, 0, 0)}),
    "mup-library-sgd": ("sgd", {"readin": (0, 0, -1), "hidden": (0, 0.5, 0),
                                "readout": (1, 0, -1)}),
    # the same with rescale_params=False: the readout starts smaller than muP's (b = 1/2)
    "mup-library-adam-norescale": ("adam", {"readin": (0, 0, 0), "hidden": (0, 0.5, 1),
                                            "readout": (1, 0.5, 0)}),
    "mup-library-sgd-norescale": ("sgd", {"readin": (0, 0, -1), "hidden": (0, 0.5, 0),
                                          "readout": (1, 0.5, -1)}),
}
