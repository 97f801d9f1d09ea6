#!/usr/bin/env python
"""Toy experiment of the Kendall uncertainty-weighting report (§2.3, Fig. 3): recover σ's.

Two noisy regression targets of one input, ``y1 = 2x + 8 + ε1`` (σ1 = 10) and
``y2 = 3x + 3 + ε2`` (σ2 = 1), 1000 i.i.d. samples, a two-layer network (one shared hidden
layer, one linear output per task) trained with the uncertainty-weighted regression loss
``Σ_i ½·exp(−s_i)·MSE_i + s_i/2`` (report eq. 3 with the ``log σ`` regulariser; see
:mod:`conf_plugins.losses.uncertainty_weighting`). Its optimum is ``exp(s_i) = MSE_i``, so the
recovered ``σ_i = exp(s_i/2)`` is the residual standard deviation and should match the
noise level from any initialisation; the report starts σ at 1 and at 5 (Fig. 3 d, e) and
gets 9.95 and 0.95.

The report leaves open the input distribution, the hidden width, the optimiser and the
batch size of its 500 epochs. Here: ``x ~ N(0, 1)``, 64 ReLU hidden units, full-batch Adam
(lr 0.05, the same for network and ``s``) for 2000 steps, all in float64. The σ's land on
the RMS of the noise actually drawn (printed too), which differs from 10 and 1 by the
sampling error of 1000 draws (≈ 2%).
Run: ``python experiments/kendall_toy/kendall_toy.py [--steps N] [--seed S]``.
"""

import argparse
import math
import sys

import torch
from torch import nn

from conf_plugins.losses import UncertaintyWeightedLoss

TRUE_SIGMAS = (10.0, 1.0)
TASKS = ("y1", "y2")


def make_data(num_samples: int, generator: torch.Generator):
    """``x``, the two noisy targets of report §2.3 and their noise; float64, ``[N, 1]`` each."""
    x, e1, e2 = torch.randn(3, num_samples, 1, generator=generator, dtype=torch.float64)
    e1, e2 = TRUE_SIGMAS[0] * e1, TRUE_SIGMAS[1] * e2
    return x, 2 * x + 8 + e1, 3 * x + 3 + e2, (e1, e2)


class TwoTaskNet(nn.Module):
    """Shared hidden layer (ReLU) and one linear output per task."""

    def __init__(self, hidden: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(1, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def forward(self, x):
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def train(init_sigma: float, x, y1, y2, steps: int, hidden: int, lr: float, seed: int):
    """Train from σ1 = σ2 = ``init_sigma``; return the recovered ``(σ1, σ2)``."""
    torch.manual_seed(seed)
    net = TwoTaskNet(hidden).double()
    criterion = UncertaintyWeightedLoss(
        TASKS, ("regression", "regression"), init_log_vars=2 * math.log(init_sigma)
    ).double()
    optim = torch.optim.Adam([*net.parameters(), *criterion.parameters()], lr=lr)
    for _ in range(steps):
        p1, p2 = net(x)
        losses = criterion({"y1": nn.functional.mse_loss(p1, y1), "y2": nn.functional.mse_loss(p2, y2)})
        optim.zero_grad(set_to_none=True)
        losses["total"].backward()
        optim.step()
    sigmas = criterion.sigmas()
    return sigmas["y1"], sigmas["y2"]


def main(argv=None) -> dict[float, tuple[float, float]]:
    """Run the experiment, print a table, return ``{init σ: (σ1, σ2)}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-sigmas", type=float, nargs="+", default=[1.0, 5.0])
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    x, y1, y2, noise = make_data(args.num_samples, generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small only loses time to thread synchronisation
    try:
        results = {
            s0: train(s0, x, y1, y2, args.steps, args.hidden, args.lr, args.seed) for s0 in args.init_sigmas
        }
    finally:
        torch.set_num_threads(threads)
    print(f"{'init sigma':>12} | {'sigma1 (true 10)':>16} | {'sigma2 (true 1)':>15}")
    for s0, (s1, s2) in results.items():
        print(f"{s0:>12g} | {s1:>16.3f} | {s2:>15.3f}")
    rms = [float(e.pow(2).mean().sqrt()) for e in noise]
    print(f"{'sample noise':>12} | {rms[0]:>16.3f} | {rms[1]:>15.3f}  (RMS of the drawn noise)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
