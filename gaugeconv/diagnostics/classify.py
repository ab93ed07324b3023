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

At r = 1/2 a readout initialised smaller than 1/2 + r (zero init, the mup library's output
multiplier) still gives muP and is accepted. A parameterization outside the family is reported
with the desideratum that fails per layer, and the nearest member (same multipliers, corrected
init and learning-rate exponents).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..gauges import NAMED_POINTS
from ..richness import Family

__all__ = ["classify_abc", "classify_measured", "classify_factory", "abc_of", "PRESETS",
           "Classification"]

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
    abc = {role: [float(x) for x in abc[role]] for role in ROLES}
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
                notes.append("readout initialised smaller than 1/(alpha^2 fan_in) (e.g. zero or "
                             "the mup library's output multiplier): still muP at r = 1/2")
            else:
                failures.append(_failure(role, "init", init_have, init_want))
        if abs(step_have - step_want) > TOL:
            failures.append(_failure(role, "step", step_have, step_want))
    return failures, notes


def abc_of(measured: Mapping[int, Mapping[str, Mapping[str, float]]], optimizer: str = "sgd"
           ) -> tuple[dict[str, list[float]], float | None, float | None]:
    """Fit (a, b, c) per role from {width: {role: {multiplier, init_std, lr, fan_in}}}.

    Also reads off gamma (from the readout's effective init) and eta (from its effective step).
    """
    family = Family.parse(optimizer)
    widths = sorted(measured)
    if len(widths) < 2:
        raise ValueError("measured values at two or more widths are needed")
    logs = [math.log(w) for w in widths]

    def slope(values):
        ys = [math.log(v) for v in values]
        mx, my = sum(logs) / len(logs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(logs, ys)) / sum((x - mx) ** 2 for x in logs)

    abc = {}
    for role in ROLES:
        m = [measured[w][role]["multiplier"] for w in widths]
        s = [measured[w][role]["init_std"] for w in widths]
        lr = [measured[w][role]["lr"] for w in widths]
        abc[role] = [round(-slope(m), 9) + 0.0, round(-slope(s), 9) + 0.0,
                     round(-slope(lr), 9) + 0.0]
    # constants from the largest width: readout v = 1/(gamma^2 n^2r fan_in), lambda = eta/fan_in
    n = widths[-1]
    out = measured[n]["readout"]
    k = 1 if family is Family.SGD else 0
    eff_std = out["multiplier"] * out["init_std"]
    eta = out["lr"] * out["multiplier"] ** (1 + k) * out["fan_in"]
    r_init = abc["readout"][0] + abc["readout"][1] - 0.5
    gamma = 1.0 / (eff_std * math.sqrt(out["fan_in"]) * n ** max(r_init, 0.0)) if eff_std > 0 else None
    return abc, gamma, eta


def classify_measured(measured, optimizer: str = "sgd") -> Classification:
    abc, gamma, eta = abc_of(measured, optimizer)
    return classify_abc(abc, optimizer, gamma=gamma, eta=eta)


def classify_factory(factory: Callable[[int], Any], widths: Sequence[int] = (256, 1024),
                     lr: float = 1.0) -> Classification:
    """Classify a factory width -> GaugedModel (its multipliers, init stds and groups' lrs)."""
    measured = {}
    family = None
    for w in widths:
        gm = factory(w)
        family = gm.parameterization.family
        per_role: dict[str, dict[str, float]] = {}
        for plan in gm.plans.values():
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
    # microsoft/mup: MuReadout divides the output by the width multiplier (a = 1), default init
    "mup-library-adam": ("adam", {"readin": (0, 0, 0), "hidden": (0, 0.5, 1),
                                  "readout": (1, 0.5, 0)}),
    "mup-library-sgd": ("sgd", {"readin": (0, 0, -1), "hidden": (0, 0.5, 0),
                                "readout": (1, 0.5, -1)}),
}
