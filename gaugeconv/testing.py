"""Equivalence assertions for your own test suite.

Each function raises an ``AssertionError`` whose message is the whole report (who was
compared, the per-step table of loss, logits and effective-weight differences, the tolerance
and why it failed) and returns the report(s) when the check passes::

    from gaugeconv.testing import assert_same_trajectory

    def test_my_model_trains_the_same_in_every_gauge():
        assert_same_trajectory(build_my_model, gauges=("stp", "mup", "rescaling"), steps=5)

* ``assert_same_function(a, b, inputs)``: two models compute the same outputs.
* ``assert_same_trajectory(model, gauges=..., batches=..., optimizer=..., steps=...)``: builds a
  gauged copy of ``model`` per gauge (the materialized form by default: that is where gauges
  differ), the optimizer each gauge prescribes, and trains the first gauge side by side with
  each other one.
* ``assert_converted_checkpoint(src, dst)`` (or ``to=``): ``gaugeconv verify`` on folders.

``negative_control="eps"|"multiplier"`` turns an assertion around: it breaks that rule on side B
and asserts that the comparison FAILS (a check that cannot fail proves nothing). The pytest
plugin (``gaugeconv.pytest_plugin``, registered under ``pytest11``) adds the ``gauged_pair``
fixture on top of these.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .equivalence.controls import drop_multiplier, leave_eps_unmoved
from .equivalence.engine import Side, compare_function, output_tensors, rel_diff, run_side_by_side
from .equivalence.report import EquivalenceReport, format_report
from .equivalence.tolerance import default_tolerance
from .errors import GaugeError
from .forms import MATERIALIZED, PLAIN
from .model import GaugedModel
from .tensor_ops import is_power_of_two

__all__ = ["assert_same_function", "assert_same_trajectory", "assert_converted_checkpoint",
           "GaugedPair", "gauged_copy"]

ModelSource = nn.Module | GaugedModel | Callable[[], nn.Module | GaugedModel]


def _dtype_of(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _module(model: nn.Module | GaugedModel) -> nn.Module:
    return model.module if isinstance(model, GaugedModel) else model


def assert_same_function(a: nn.Module | GaugedModel, b: nn.Module | GaugedModel, inputs: Any,
                         tolerance: float | None = None) -> float:
    """Every output of a(inputs) and b(inputs) (eval mode, no gradients) agrees to the dtype's
    tolerance; returns the largest relative difference. ``inputs``: a dict (keyword arguments),
    a tuple (positional) or one tensor."""
    ma, mb = _module(a), _module(b)
    tol = default_tolerance(_dtype_of(ma)) if tolerance is None else tolerance
    worst, identical = compare_function(ma, mb, inputs)
    if worst <= tol:
        return worst
    from .equivalence.engine import call_model

    with torch.no_grad():
        modes = [(m, m.training) for m in (ma, mb)]
        ma.eval()
        mb.eval()
        try:
            oa, ob = output_tensors(call_model(ma, inputs)), output_tensors(call_model(mb, inputs))
        finally:
            for m, mode in modes:
                m.train(mode)
    lines = [f"the two models compute different functions: largest relative difference "
             f"{worst:.3e} > tolerance {tol:.1e}", f"{'output':>6}  {'shape':<18} {'rel diff':>9}"]
    for i, (x, y) in enumerate(zip(oa, ob)):
        lines.append(f"{i:>6}  {str(list(x.shape)):<18} {rel_diff(x, y):>9.2e}")
    if len(oa) != len(ob):
        lines.append(f"A returned {len(oa)} output tensors, B {len(ob)}")
    raise AssertionError("\n".join(lines))


def gauged_copy(source: ModelSource, gauge: str, richness: float | None = None,
                family: str = "adam", form: str = MATERIALIZED, seed: int = 0,
                gauge_options: Mapping[str, Any] | None = None) -> tuple[nn.Module, GaugedModel]:
    """A fresh copy of ``source`` (a model, a GaugedModel, or a factory) in ``gauge`` and ``form``.

    A factory is called under ``torch.manual_seed(seed)`` (inside ``fork_rng``: the caller's
    generator is left as it was), so every call builds the same weights.
    A transformers model without a gauge is taken as STP gauge at ``richness`` (default 0.5),
    with ``gauge_options`` as further GaugeConfig fields (width, allow_unusual_roles,
    module_axes...); a gauged one keeps its richness and family. The source is never changed.
    """
    if callable(source) and not isinstance(source, (nn.Module, GaugedModel)):
        with torch.random.fork_rng(devices=[]):  # the same weights at every call
            torch.manual_seed(seed)
            model = source()
    else:
        model = copy.deepcopy(source)
    if isinstance(model, GaugedModel):
        model.convert(gauge, form=form)
        return model.module, model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a model, a GaugedModel or a factory of one, not "
                        f"{type(model).__name__}")
    import gaugeconv.hf as gh

    if _hf_handle(model) is not None:
        gh.convert_gauge(model, gauge, form=form)
    elif hasattr(model, "config"):
        recorded = gh.gauge_config_of(model)
        if recorded is not None:
            gh.apply_gauge(model, recorded.replace(gauge=gauge, multipliers=None, form=form))
        else:
            options = {"optimizer": family, **(gauge_options or {})}
            gh.apply_gauge(model, gh.GaugeConfig(richness=0.5 if richness is None else richness,
                                                 gauge=gauge, form=form, **options))
    else:
        raise TypeError(f"{type(model).__name__} is neither a transformers model nor a "
                        "GaugedModel: wrap it with gaugeconv.attach(model, parameterization)")
    return model, gh.get_gauged(model)


def _hf_handle(model: nn.Module) -> GaugedModel | None:
    """The gauge gaugeconv.hf attached to a transformers (or peft) model; None otherwise."""
    if not hasattr(model, "config"):
        return None
    import gaugeconv.hf as gh

    try:
        return gh.get_gauged(model)
    except GaugeError:
        return None


def _optimizer(model: nn.Module, gauged: GaugedModel, optimizer: str | type, lr: float | None,
               hyper: dict[str, Any]) -> torch.optim.Optimizer:
    name = optimizer if isinstance(optimizer, str) else optimizer.__name__
    if lr is None:
        lr = 0.05 if name.lower() == "sgd" else 1e-3
    if _hf_handle(model) is gauged:  # what GaugeTrainer builds: the Trainer's no-decay rule
        from .hf.trainer import GaugeOptimizerFactory

        return GaugeOptimizerFactory()(model, optimizer, lr=lr, **hyper)
    return gauged.make_optimizer(optimizer, lr, **hyper)


def _batches(batches: Iterable[Any] | None, model: nn.Module, steps: int, loss: Any,
             seed: int) -> tuple[list[tuple[Any, Any]], Any]:
    if batches is None:
        if not hasattr(model, "config"):
            raise GaugeError("batches= is needed for a model that is not a transformers model")
        from .hf.feed import feed_for

        feed = feed_for(model, steps, batch_size=2, seq_len=12, seed=seed)
        return feed.batches, loss or feed.loss
    out = []
    task = None
    for item in batches:
        if isinstance(item, dict):
            inputs = {k: v for k, v in item.items() if k != "labels"}
            targets = item.get("labels")
            if targets is None and hasattr(model, "config"):
                from .hf.feed import task_of

                task = task or task_of(model)
                if task == "causal-lm":
                    targets = inputs.get("input_ids")
            out.append((inputs, targets))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((item[0], item[1]))
        else:
            raise TypeError("each batch is a dict of model inputs (with 'labels') or a pair "
                            "(inputs, targets)")
    if not out:
        raise GaugeError("batches= is empty")
    missing = next((i for i, (_, t) in enumerate(out) if t is None), None)
    if missing is not None and loss is None:
        raise GaugeError(f"batch {missing} has no 'labels': give them, or loss=(outputs, "
                         "targets) -> scalar")
    if loss is None:
        if not hasattr(model, "config"):
            raise GaugeError("loss= is needed for a model that is not a transformers model: "
                             "loss(outputs, targets) -> scalar")
        from .hf.feed import loss_for, task_of

        loss = loss_for(task or task_of(model), seed)
    return out, loss


def _control(kind: str | None, side: Side) -> dict[str, Any] | None:
    if kind is None:
        return None
    if kind == "multiplier":
        dropped = drop_multiplier(side.gauged)
        return {"kind": kind, "side": "B", **dropped,
                "what": f"side B uses {dropped['tensor']} without its multiplier "
                        f"{dropped['multiplier']:.4g}"}
    if kind == "eps":
        from .model import _applied

        factors = _applied(side.gauged.parameterization, PLAIN).scales_to(side.gauged.applied)
        changed = leave_eps_unmoved(side.optimizer, side.gauged.rule_for(side.optimizer), factors)
        if not changed:
            raise GaugeError("the eps control needs side B in the materialized form of a gauge "
                             "other than STP (its eps must move to be left out)")
        return {"kind": kind, "side": "B", "groups": changed,
                "what": f"side B's Adam eps left in effective units ({changed} group(s))"}
    raise GaugeError(f"negative_control={kind!r}: give 'eps' or 'multiplier'")


def _verdict(reports: Sequence[EquivalenceReport], control: str | None) -> None:
    if control is None:
        bad = [r for r in reports if not r.equivalent]
        if bad:
            raise AssertionError("\n\n".join(format_report(r) for r in bad))
    else:
        passed = [r for r in reports if r.equivalent]
        if passed:
            raise AssertionError(
                f"the negative control {control!r} did not make the comparison fail, so this "
                "check cannot see that error here:\n\n" + "\n\n".join(format_report(r)
                                                                      for r in passed))


def assert_same_trajectory(
    model: ModelSource,
    gauges: Sequence[str] = ("stp", "mup", "rescaling"),
    batches: Iterable[Any] | None = None,
    optimizer: str | type = "adamw",
    steps: int = 5,
    lr: float | None = None,
    richness: float | None = None,
    form: str = MATERIALIZED,
    loss: Callable[[Any, Any], torch.Tensor] | None = None,
    tolerance: float | None = None,
    negative_control: str | None = None,
    seed: int = 0,
    gauge_options: Mapping[str, Any] | None = None,
    **hyper: Any,
) -> list[EquivalenceReport]:
    """Train ``model`` in ``gauges[0]`` side by side with each other gauge; assert equivalence.

    ``model``: a transformers model (plain: STP gauge at ``richness``, default 0.5; or gauged),
    a ``GaugedModel`` (``gaugeconv.attach``, ``build_mlp``), or a factory of either. Each side is
    a fresh gauged copy in ``form`` with the optimizer its gauge prescribes (the factory's
    groups; ``lr`` and ``hyper`` are effective-space values, default lr 1e-3 for Adam-type, 0.05
    for SGD). ``batches``: dicts of model inputs with ``labels`` or (inputs, targets) pairs,
    cycled over ``steps``; default synthetic batches for a transformers model. ``loss(outputs,
    targets)``: default the task's cross-entropy in the logits' dtype. ``gauge_options``: more
    GaugeConfig fields for a plain transformers model (``{"width": 32}`` for a config without a
    hidden size, ``{"allow_unusual_roles": True}``...). Returns one report per
    pair; raises AssertionError with the per-step table when a pair is not equivalent (with
    ``negative_control``: when a pair IS equivalent).
    """
    if len(gauges) < 2:
        raise GaugeError(f"gauges={tuple(gauges)!r}: give at least two gauges to compare")
    if form not in (MATERIALIZED, PLAIN):
        raise GaugeError(f"form={form!r}: give 'materialized' or 'plain'")
    name = optimizer if isinstance(optimizer, str) else optimizer.__name__
    family = "sgd" if name.lower() == "sgd" else "adam"
    reports = []
    data = None
    for other in gauges[1:]:
        sides = []
        for gauge in (gauges[0], other):
            module, gauged = gauged_copy(model, gauge, richness, family, form, seed,
                                         gauge_options)
            opt = _optimizer(module, gauged, optimizer, lr, dict(hyper))
            sides.append(Side(f"{gauged.gauge.name} gauge ({form} form)", module, gauged, opt))
        if data is None:
            data = _batches(batches, sides[0].model, steps, loss, seed)
        control = _control(negative_control, sides[1])
        factors = sides[0].gauged.applied.scales_to(sides[1].gauged.applied)
        report = run_side_by_side(sides[0], sides[1], data[0], data[1], steps,
                                  _dtype_of(sides[0].model), tolerance,
                                  expected_bit_identical=all(is_power_of_two(s)
                                                             for s in factors.values()),
                                  seed=seed)
        report.negative_control = control
        if form == PLAIN:
            report.notes.append("the plain form: every gauge trains the identical model with the "
                                "STP gauge's groups there; form='materialized' compares the "
                                "gauges' stored units")
        reports.append(report)
    _verdict(reports, negative_control)
    return reports


def assert_converted_checkpoint(src: Any, dst: Any = None, to: str | None = None,
                                **options: Any) -> EquivalenceReport:
    """``gaugeconv verify SRC DST`` (or ``SRC --to GAUGE``) as an assertion.

    ``options``: the fields of ``gaugeconv.verify_folders.FolderVerifyConfig`` (steps, dtype,
    form, data, richness, negative_control, tolerance...). A Trainer checkpoint is resumed on
    both sides and its continuation compared. Returns the report; raises AssertionError with it
    when the folders do not train the same run (with ``negative_control``: when they do).
    """
    from .verify_folders import FolderVerifyConfig, verify_folders

    cfg = FolderVerifyConfig(src=str(src), dst=None if dst is None else str(dst), to=to,
                             **options)
    report = verify_folders(cfg)
    _verdict([report], cfg.negative_control)
    return report


class GaugedPair:
    """Two gauged copies of a model factory, for the ``gauged_pair`` pytest fixture.

    ``a`` and ``b`` are fresh models in gauges ``gauges[0]`` and ``gauges[1]`` (materialized);
    the assertion methods build their own fresh copies, so they can be called in any order.
    """

    def __init__(self, factory: ModelSource, gauges: tuple[str, str], richness: float = 0.5,
                 form: str = MATERIALIZED) -> None:
        self.factory, self.gauges, self.richness, self.form = factory, tuple(gauges), richness, form
        self._models: dict[int, nn.Module] = {}

    def _model(self, i: int) -> nn.Module:
        if i not in self._models:
            self._models[i] = gauged_copy(self.factory, self.gauges[i], self.richness,
                                          form=self.form)[0]
        return self._models[i]

    @property
    def a(self) -> nn.Module:
        return self._model(0)

    @property
    def b(self) -> nn.Module:
        return self._model(1)

    def __repr__(self) -> str:
        return f"GaugedPair({self.gauges[0]} vs {self.gauges[1]}, r={self.richness}, {self.form})"

    def assert_same_function(self, inputs: Any = None, tolerance: float | None = None) -> float:
        """Same outputs on ``inputs`` (default: a synthetic batch for a transformers model)."""
        if inputs is None:
            from .hf.feed import feed_for

            inputs = feed_for(self.a, 1, batch_size=2, seq_len=12).batches[0][0]
        return assert_same_function(self.a, self.b, inputs, tolerance)

    def assert_same_trajectory(self, **kwargs: Any) -> EquivalenceReport:
        """``assert_same_trajectory`` over this pair; keyword arguments as there."""
        kwargs.setdefault("richness", self.richness)
        kwargs.setdefault("form", self.form)
        return assert_same_trajectory(self.factory, gauges=self.gauges, **kwargs)[0]
