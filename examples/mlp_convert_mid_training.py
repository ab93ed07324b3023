"""Train the reference MLP in STP gauge, convert it (and its AdamW state) to muP gauge halfway.

The materialized form, where the stored tensors, the multipliers and the optimizer state of each
gauge differ: the conversion moves all of them, and the run continues on the same trajectory.
(In the default plain form a gauge change only relabels the model: its Parameters and STP
optimizer groups are the same in every gauge.)

Run:  python examples/mlp_convert_mid_training.py
"""

import torch

import gaugeconv as gc
from gaugeconv.data import load_data

data = load_data("digits", torch.float64)
runs = {}
for convert in (False, True):
    gm = gc.build_mlp(data.d_in, data.d_out, width=512, richness=0.5, gauge="stp",
                      optimizer="adam", dtype=torch.float64, seed=0, form="materialized")
    opt = gm.make_optimizer("adamw", lr=0.5, eps=1e-8, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 5))
    losses = []
    for step, (x, y) in enumerate(data.batches(40, 64, seed=1)):
        if convert and step == 20:
            gm.convert("mup", optimizer=opt, schedulers=[sched])
        opt.zero_grad()
        loss = data.loss(gm.module(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    runs[convert] = losses

print(f"{'step':>4}  {'STP throughout':>16}  {'STP -> muP @20':>16}")
for step in range(0, 40, 5):
    print(f"{step:>4}  {runs[False][step]:>16.12f}  {runs[True][step]:>16.12f}")
worst = max(abs(a - b) / abs(a) for a, b in zip(runs[False], runs[True]))
print(f"largest relative loss difference: {worst:.2e}")
