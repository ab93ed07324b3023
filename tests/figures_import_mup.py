"""The figures behind README's "Coming from microsoft/mup" (issue 17): run-against-mup differences.

Run from the repository root:  python -m tests.figures_import_mup

Every line is one comparison of tests/test_import_mup_{groups,clip,transformer,frozen}.py with
the real mup package in float64: the largest relative difference of the outputs on a probe
batch (over the steps) and of the effective weights (at the end), for the import and for its
negative control.
"""

from __future__ import annotations

import time

import torch

from tests import test_import_mup_clip as clip
from tests import test_import_mup_frozen as frozen
from tests import test_import_mup_groups as groups
from tests import test_import_mup_transformer as transformer
from tests.mup_models import batches, follow_mup, make, make_transformer, token_batches


def show(what: str, run) -> None:
    print(f"{what:<66} outputs {run.outputs:8.1e}  weights {run.weights:8.1e}")


def main() -> None:
    start = time.perf_counter()
    data = list(batches(6))
    for name, make_opt, cls in (("MuAdam betas/amsgrad per group", groups.mu_adam, "Adam"),
                                ("MuSGD momentum/dampening/nesterov per group", groups.mu_sgd,
                                 "SGD")):
        opt_cls = getattr(torch.optim, cls)
        for gauges in ([None], ["stp", "rescaling"]):
            show(f"1 {name}, make_optimizer, {gauges}",
                 follow_mup(lambda: make(128), make_opt, data, gauges, 0,
                            rebuild=groups.rebuilt(opt_cls)))
        show(f"1 {name}, defaults only (negative control)",
             follow_mup(lambda: make(128), make_opt, data, ["stp"], 0,
                        rebuild=groups.defaults_only(opt_cls)))
    tokens = list(token_batches(6))
    for kind in ("adam", "sgd"):
        for gauges, how in (([None], "source"), (["stp"], "source"), (["stp", "rescaling"], "source"),
                            (["stp"], "torch"), ([None], "effective")):
            run = follow_mup(lambda: make_transformer(clip.N), clip.OPTIMIZERS[kind], tokens, gauges,
                             0 if gauges == [None] else 2, clip=(clip.MAX_NORM, how))
            show(f"2 clip 0.25 Mu{kind.upper()}, {how} clip, {gauges}", run)
        print(f"  mup's norms before clipping: {[round(x, 3) for x in run.norms]}")
    tokens = list(token_batches(7))
    for kind, tied in (("adam", False), ("adam", True), ("adamw", False), ("sgd", False)):
        for import_at, gauges in ((0, [None]), (2, ["stp", "rescaling"]), (2, ["rescaling", "mup"])):
            show(f"3 Transformer Mu{kind.upper()} tied={tied}, import at {import_at}, {gauges}",
                 follow_mup(lambda t=tied: make_transformer(transformer.N, t),
                            transformer.OPTIMIZERS[kind], tokens, gauges, import_at))

    def wrong(imported):
        for group in imported.optimizer.param_groups:
            if group["param_names"] == ["layers.0.self_attn.in_proj_weight"]:
                group["lr"] *= transformer.N / 16
        return imported.optimizer

    show("3 Transformer, in_proj_weight at vector-like lr (negative control)",
         follow_mup(lambda: make_transformer(transformer.N), transformer.OPTIMIZERS["adam"],
                    list(token_batches(5)), ["stp"], 0, rebuild=wrong))
    for kind in ("adam", "sgd"):
        for how in ("left out", "lr 0"):
            build = frozen.optimizer(kind, how)
            show(f"4 frozen ({how}) Mu{kind.upper()}, ['stp', 'rescaling'] at 2",
                 follow_mup(lambda: make(128), build, data, ["stp", "rescaling"], 2))
            show(f"4 frozen ({how}) Mu{kind.upper()}, make_optimizer",
                 follow_mup(lambda: make(128), build, data, ["stp"], 0, rebuild=frozen.rebuilt))
            show(f"4 frozen ({how}) Mu{kind.upper()}, trained anyway (negative control)",
                 follow_mup(lambda: make(128), build, data, ["stp"], 0,
                            rebuild=frozen.trained_anyway))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
