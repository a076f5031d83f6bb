"""How tight is the discrete-time bound with a perfect predictor? The lattice oracle.

Data: ``D`` independent dimensions of ``L``-level lattice data (uniform levels, or a skewed
law with 40% of the mass on level 0), whose exact posterior ``E[x | z_t]`` and
``Var[x | z_t]`` play the network (:mod:`ndm.analysis.lattice_oracle`). For each formulation of the
bound and each ``T`` the table gives the discrete NELBO (all ``T`` terms, the categorical
decoder) minus the entropy, in bits/dim, ± one standard error over examples. Usage::

    python -m benchmarks.lattice_oracle --out benchmarks/results/lattice_oracle.md
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from pathlib import Path

import torch

from benchmarks.harness import report
from ndm.analysis.lattice_oracle import (
    LatticeOracle,
    centres,
    entropy_nats,
    fit_endpoints,
    level_probabilities,
    make_transform,
    sample_levels,
)
from ndm.diffusion.decoders import CategoricalDecoder
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import LinearVPSchedule, LogSNRLinearSchedule
from ndm.losses.likelihood import discrete_nelbo

LEARNED_ENDS = "log-SNR linear, learned end points, variance from Var[x | z_t]"
# label -> (schedule, whether the reverse variance is the oracle's optimum)
FORMULATIONS = {
    "paper: linear VP, posterior variance": (LinearVPSchedule, False),
    "log-SNR linear, posterior variance": (LogSNRLinearSchedule, False),
    "log-SNR linear, variance from Var[x | z_t] (default)": (LogSNRLinearSchedule, True),
    LEARNED_ENDS: (partial(LogSNRLinearSchedule, learn_endpoints=True), True),
}


def excess_bits(
    label: str, num_levels: int, skewed: bool, num_steps: int, n: int, dims: int
) -> tuple[float, float, tuple[float, float] | None]:
    """Mean and standard error over examples of ``NELBO + log P(x)``, bits/dim, and the end
    points when they are learned (fit on the oracle's bound, other examples)."""
    schedule_cls, variance = FORMULATIONS[label]
    schedule = schedule_cls().double()
    transform = make_transform(False, dims)
    probs = level_probabilities(num_levels, skewed)
    oracle = LatticeOracle(schedule, transform, probs, num_steps if variance else None)
    process = NeuralDiffusion(schedule, transform)
    ends = fit_endpoints(process, oracle, probs, num_steps, dims) if label == LEARNED_ENDS else None
    levels = sample_levels(probs, n, dims, seed=num_steps)
    terms = discrete_nelbo(
        process,
        oracle,
        centres(num_levels)[levels],
        num_steps,
        CategoricalDecoder(num_levels),
        torch.Generator().manual_seed(0),
    )
    excess = (terms.total + probs.log()[levels].sum(1)) / (dims * math.log(2))
    return float(excess.mean()), float(excess.std()) / math.sqrt(n), ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=256)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--dims", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    steps = (10, 100, 1000)
    lines = [
        f"# Discrete NELBO minus entropy with the exact posterior, {args.levels} levels (bits/dim)",
        "",
        f"{args.examples} examples of {args.dims} independent dimensions, all T terms summed; "
        "± one standard error over examples. Learned end points: 100 Adam steps (lr 0.05) on "
        "the training estimate of the bound, 256 other examples a step.",
        "",
        "| formulation | law | entropy | " + " | ".join(f"T = {t}" for t in steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for label in FORMULATIONS:
        for skewed in (False, True):
            probs = level_probabilities(args.levels, skewed)
            cells = []
            for t in steps:
                mean, stderr, ends = excess_bits(
                    label, args.levels, skewed, t, args.examples, args.dims
                )
                fitted = "" if ends is None else f" (gamma {ends[0]:.1f} to {ends[1]:.1f})"
                cells.append(f"{mean:+.3f} ± {stderr:.3f}{fitted}")
            entropy = entropy_nats(probs) / math.log(2)
            law = "skewed" if skewed else "uniform"
            lines.append(f"| {label} | {law} | {entropy:.3f} | " + " | ".join(cells) + " |")
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
