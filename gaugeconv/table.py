"""The gauge table: per role and gauge, multiplier, stored init std and hyperparameter factors.

Roles are those of the reference MLP at width n: readin (fan_in d), hidden (fan_in n), readout
(fan_in n), readin vectors (biases, norm parameters: fan_in 1) and fixed (output bias, scalars).
Factors multiply the user's effective-space value: stored lr = eta * lr_factor, stored eps =
eps * eps_factor, stored weight decay = wd * wd_factor (coupled or decoupled).
"""

from __future__ import annotations

from typing import Any

from .gauges import GAUGE_NAMES
from .plan import Parameterization
from .richness import Family, Richness, Role
from .spec import TensorSpec

__all__ = ["gauge_table", "format_table"]


def _role_specs(width: int, d_in: int) -> list[TensorSpec]:
    return [
        TensorSpec("readin", Role.READIN, d_in),
        TensorSpec("hidden", Role.HIDDEN, width),
        TensorSpec("readout", Role.READOUT, width),
        TensorSpec("readin-vector", Role.READIN, 1, init="zeros"),
        TensorSpec("fixed", Role.FIXED, 1, init="keep"),
    ]


def gauge_table(
    richness: float, width: int, optimizer: str = "sgd", gamma: float = 1.0, d_in: int = 64
) -> dict[str, Any]:
    """Rows for every role and gauge, plus the gauge-invariant targets (v, lambda/eta)."""
    rich = Richness(richness, gamma)
    family = Family.parse(optimizer)
    rows = []
    for gauge in GAUGE_NAMES:
        param = Parameterization(_role_specs(width, d_in), rich, gauge, family, width)
        for name, plan in param.plans.items():
            rows.append(
                {
                    "gauge": gauge,
                    "role": name,
                    "fan_in": plan.spec.fan_in,
                    "init_variance": plan.target.variance,
                    "lambda_over_eta": plan.target.lr_factor,
                    "multiplier": plan.multiplier,
                    "init_std": plan.init_std if plan.spec.init == "normal" else plan.spec.init,
                    "lr_factor": plan.lr_factor,
                    "eps_factor": plan.eps_factor,
                    "wd_factor_coupled": plan.coupled_wd_factor,
                    "wd_factor_decoupled": plan.decoupled_wd_factor,
                }
            )
    return {
        "richness": rich.r,
        "gamma": rich.gamma,
        "width": width,
        "alpha": rich.alpha(width),
        "optimizer_family": family.value,
        "input_dim": d_in,
        "rows": rows,
    }


def _fmt(x: float | None) -> str:
    return "keep" if x is None else f"{x:.4g}"


def format_table(table: dict[str, Any]) -> str:
    head = (
        f"r={table['richness']:g}  gamma={table['gamma']:g}  n={table['width']}  "
        f"alpha={table['alpha']:.4g}  optimizer family={table['optimizer_family']}  "
        f"d={table['input_dim']}"
    )
    cols = [
        ("gauge", "gauge"), ("role", "role"), ("fan_in", "fan_in"), ("v", "init_variance"),
        ("lambda/eta", "lambda_over_eta"), ("m", "multiplier"), ("init std", "init_std"),
        ("lr x", "lr_factor"), ("eps x", "eps_factor"), ("wd x (coupled)", "wd_factor_coupled"),
        ("wd x (decoupled)", "wd_factor_decoupled"),
    ]
    cells = [[t for t, _ in cols]]
    for row in table["rows"]:
        cells.append([row[k] if isinstance(row[k], str) else _fmt(row[k]) for _, k in cols])
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(cols))]
    lines = [head, ""]
    for j, r in enumerate(cells):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
