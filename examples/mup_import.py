"""Take over a microsoft/mup training run: checkpoint + MuAdamW state -> gaugeconv, and resume.

A 3-layer MLP (d_in 64 -> 256 -> 256 -> 10, base width 32, biases, MuReadout) is trained with
MuAdamW for 20 steps on scikit-learn's digits and saved (model and optimizer state dicts). A
fresh process would then rebuild the model, set_base_shapes(..., rescale_params=False) (the
checkpoint's weights are already rescaled), load both files, and call from_mup, which returns
the same module in gaugeconv's STP gauge (stored = effective weights, per-tensor learning
rates) and an AdamW with one group per tensor and the state carried over. Training resumes for
20 steps; an uninterrupted 40-step mup run is the reference. Finally the STP weights load into
a plain nn.Sequential without MuReadout and compute the same function.

Run:  python examples/mup_import.py
"""

import tempfile
from pathlib import Path

import mup
import torch
from torch import nn

from gaugeconv.data import load_data
from gaugeconv.importers import from_mup

data = load_data("digits", torch.float64)
WIDTH, BASE = 256, 32


def mup_mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(data.d_in, width), nn.Tanh(), nn.Linear(width, width),
                         nn.Tanh(), mup.MuReadout(width, data.d_out)).double()


def fresh(rescale: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = mup_mlp(WIDTH)
    mup.set_base_shapes(model, mup_mlp(BASE), delta=mup_mlp(2 * BASE), rescale_params=rescale)
    return model


def step(model, opt, x, y) -> float:
    opt.zero_grad()
    loss = data.loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


batches = list(data.batches(40, 64, seed=1))
hyper = dict(lr=3e-3, eps=1e-6, weight_decay=1e-2)

# the reference: 40 steps of mup
ref = fresh()
ref_opt = mup.MuAdamW(ref.parameters(), **hyper)
ref_losses = [step(ref, ref_opt, x, y) for x, y in batches]

# 20 steps of mup, saved
model = fresh()
opt = mup.MuAdamW(model.parameters(), **hyper)
losses = [step(model, opt, x, y) for x, y in batches[:20]]
folder = Path(tempfile.mkdtemp())
torch.save(model.state_dict(), folder / "model.pt")
torch.save(opt.state_dict(), folder / "optimizer.pt")

# as a fresh process would: rebuild, load, import into STP gauge, resume
model = fresh(rescale=False)
model.load_state_dict(torch.load(folder / "model.pt"))
opt = mup.MuAdamW(model.parameters(), **hyper)
opt.load_state_dict(torch.load(folder / "optimizer.pt"))
imported = from_mup(model, opt, gauge="stp")  # eps_convention="stored": mup's Adam exactly
for note in imported.notes:
    print("note:", note)
losses += [step(model, imported.optimizer, x, y) for x, y in batches[20:]]

print(f"{'step':>4}  {'mup, 40 steps':>14}  {'mup 20 + gaugeconv STP 20':>26}")
for t in (0, 10, 19, 20, 30, 39):
    print(f"{t:>4}  {ref_losses[t]:>14.10f}  {losses[t]:>26.10f}")
worst = max(abs(a - b) / abs(a) for a, b in zip(ref_losses, losses))
print(f"largest relative loss difference over 40 steps: {worst:.1e}")

print("\nper-tensor learning rates in STP gauge (eta = 3e-3):")
for group in imported.optimizer.param_groups:
    name = group["param_names"][0]
    spec = imported.gauged.parameterization.specs[name]
    print(f"  {name:<10} {spec.role.value:<8} lr {group['lr']:.4g}  lr_const {spec.lr_const:.4g}")

# negative control: gaugeconv's width-consistent eps (applied to the effective gradient) is
# not mup's (applied to the stored one, width_mult/output_mult times larger on the readout)
model = fresh(rescale=False)
model.load_state_dict(torch.load(folder / "model.pt"))
opt = mup.MuAdamW(model.parameters(), **hyper)
opt.load_state_dict(torch.load(folder / "optimizer.pt"))
other = from_mup(model, opt, gauge="stp", eps_convention="effective")
eff_losses = losses[:20] + [step(model, other.optimizer, x, y) for x, y in batches[20:]]
eps_diff = max(abs(a - b) / abs(a) for a, b in zip(ref_losses, eff_losses))
print(f"with eps_convention='effective' instead: largest relative loss difference {eps_diff:.1e}")

# STP stored weights are the effective ones: a plain model without MuReadout computes the same
plain = nn.Sequential(nn.Linear(data.d_in, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(),
                      nn.Linear(WIDTH, data.d_out)).double()
plain.load_state_dict(model.state_dict())
x = batches[0][0]
with torch.no_grad():
    diff = ((plain(x) - model(x)).abs().max() / model(x).abs().max()).item()
print(f"plain nn.Sequential with the STP weights vs the imported model: {diff:.1e}")
assert worst <= 1e-12 and diff <= 1e-12 and eps_diff > 1e-9
