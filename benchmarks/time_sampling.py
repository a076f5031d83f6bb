"""Variance of the continuous-time NELBO estimator for each time density ``p(t)``.

For a trained run, draws one ``(t, z_t)`` per test point and repetition and reports the
mean and the per-draw standard deviation of the diffusion term ``integrand(t) / p(t)``
(nats). All densities estimate the same integral; the smallest spread trains best::

    python -m benchmarks.time_sampling runs/toy2d-.../learned --out benchmarks/results/time_sampling.md
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from benchmarks.harness import report
from ndm.data.toy2d import toy2d_splits
from ndm.diffusion.timesampling import TIME_SAMPLINGS
from ndm.losses.objectives import continuous_nelbo_terms
from ndm.runs.folder import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=2000, help="test points")
    parser.add_argument("--repeats", type=int, default=16, help="draws per point")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cfg, model = load_run(args.run)
    _, test = toy2d_splits(cfg.data.dataset, cfg.data.n_train, cfg.data.n_test, cfg.data.seed)
    x = test[: args.n]
    lines = [
        f"# Continuous NELBO estimator: diffusion term by time density ({args.run.name}, "
        f"{cfg.data.dataset}, {args.n} points x {args.repeats} draws)",
        "",
        "| p(t) | mean (nats) | std per draw (nats) | std of the mean |",
        "|---|---|---|---|",
    ]
    for method in TIME_SAMPLINGS:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            draws = torch.cat(
                [
                    continuous_nelbo_terms(
                        model.process, model.predictor, x, method, generator=generator
                    ).diffusion
                    for _ in range(args.repeats)
                ]
            )
        std = float(draws.std())
        lines.append(
            f"| {method} | {float(draws.mean()):.3f} | {std:.3f} | "
            f"{std / math.sqrt(draws.numel()):.4f} |"
        )
    table = "\n".join(lines)
    report(table, args.out)


if __name__ == "__main__":
    main()
