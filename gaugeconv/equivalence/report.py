"""What a side-by-side run found: per-step differences, the verdict, and its text table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EquivalenceReport", "format_table", "format_report", "QUANTITIES"]

QUANTITIES = ("loss", "logits", "weights")


@dataclass
class EquivalenceReport:
    """Two runs compared step by step.

    ``function``: the relative difference of every output before training (eval mode).
    ``per_step``: per step, the losses of both sides and the relative differences of the loss,
    the logits (the model's outputs; a headless model's last_hidden_state) and the effective
    weights W = m*w after the step. A relative difference is max|a - b| / max(max|a|, max|b|),
    each quantity taken as one vector (all effective weights together; ``worst_tensor`` names
    the tensor holding the largest weight difference).
    """

    a: str
    b: str
    dtype: str
    steps: int
    function: float
    per_step: list[dict[str, Any]]
    max_rel_diff: dict[str, float]
    tolerance: float
    equivalent: bool
    bit_identical: bool
    expected_bit_identical: bool
    worst_tensor: str | None = None
    noise_entries: int = 0
    negative_control: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plot: str | None = None

    @property
    def verdict(self) -> str:
        if not self.equivalent:
            return "NOT EQUIVALENT"
        return "EQUIVALENT" + (" (bit-identical)" if self.bit_identical else "")

    def failures(self) -> list[str]:
        """Why the verdict is not "equivalent", one reason per line (empty when it is)."""
        out = []
        for side in ("a", "b"):
            bad = next((r["step"] for r in self.per_step
                        if not math.isfinite(r[f"loss_{side}"])), None)
            if bad is not None:
                out.append(f"side {side.upper()}'s loss is not finite from step {bad} (overflow "
                           "or underflow in this dtype?)")
        if self.function > self.tolerance:
            out.append(f"the function differs before training: {self.function:.3e} > "
                       f"{self.tolerance:.1e}")
        for key in QUANTITIES:
            value = self.max_rel_diff.get(key, 0.0)
            if value > self.tolerance:
                step = next((r["step"] for r in self.per_step if r[key] > self.tolerance), None)
                where = f" (first at step {step}" + (
                    f", worst tensor {self.worst_tensor}" if key == "weights" and self.worst_tensor
                    else "") + ")"
                out.append(f"{key}: {value:.3e} > tolerance {self.tolerance:.1e}{where}")
        if self.expected_bit_identical and not self.bit_identical and not out:
            out.append("every factor between the sides is a power of two, so the runs must be "
                       "bit-identical, and they are not")
        return out

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        out["failures"] = self.failures()
        return out


def format_table(report: EquivalenceReport, every: int = 1, limit: int = 40) -> str:
    """The per-step table: losses of both sides and the three relative differences."""
    rows = report.per_step
    if len(rows) > limit:
        every = max(every, -(-len(rows) // limit))
    head = (f"{'step':>5}  {'loss A':>14}  {'loss B':>14}  {'rel loss':>9}  {'rel logits':>10}  "
            f"{'rel W':>9}")
    lines = [head]
    for i, row in enumerate(rows):
        if i % every and i != len(rows) - 1:
            continue
        lines.append(f"{row['step']:>5}  {row['loss_a']:>14.10f}  {row['loss_b']:>14.10f}  "
                     f"{row['loss']:>9.2e}  {row['logits']:>10.2e}  {row['weights']:>9.2e}")
    return "\n".join(lines)


def format_report(report: EquivalenceReport) -> str:
    """The whole report as text: who is compared, the table, the verdict and why."""
    lines = [f"A: {report.a}", f"B: {report.b}"]
    for key, value in report.context.items():
        lines.append(f"{key}: {value}")
    control = report.negative_control
    if control:
        lines.append(f"NEGATIVE CONTROL ({control['kind']}): {control['what']}; the check must "
                     "fail")
    lines += ["", f"function before training (every output, eval mode): rel diff "
                  f"{report.function:.2e}", "", format_table(report), ""]
    d = report.max_rel_diff
    lines.append(f"max relative difference: loss {d['loss']:.3e}  logits {d['logits']:.3e}  "
                 f"weights {d['weights']:.3e}  (tolerance {report.tolerance:.1e}, "
                 f"{report.dtype})")
    if report.noise_entries:
        lines.append(f"{report.noise_entries} weight entries whose gradient was rounding noise "
                     "(the loss does not depend on them, e.g. attention key biases) are not "
                     "compared")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.expected_bit_identical:
        lines.append("every factor between the sides is a power of two: bit-identical runs "
                     "expected")
    for reason in report.failures():
        lines.append(f"fails: {reason}")
    verdict = report.verdict
    if control:
        verdict += ("  (the negative control failed, as it must)" if not report.equivalent
                    else "  (the negative control PASSED: this check cannot see that error here)")
    lines.append(f"verdict: {verdict}")
    if report.plot:
        lines.append(f"plot: {report.plot}")
    return "\n".join(lines)
