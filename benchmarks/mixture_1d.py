"""A case where a learned F can help, with the answer known: a 1-D two-mode mixture in
discrete time.

Data: ``0.5 N(-2, 0.4^2) + 0.5 N(2, 0.4^2)``, whose density is exact, so each test point's
NLL is known. Rows at ``T = 10`` and ``T = 1000``: the gap of the discrete NELBO (the sum of
all ``T`` terms, nats) to the exact NLL, paired per test point,

* of the best DDPM on the same schedule and grid: the exact posterior mean and variance
  (:mod:`ndm.analysis.mixture_oracle`), the room a learned ``F`` has to close;
* of DDPM and NDM trained on the same budget with the same MLP predictor (NDM adds
  ``F_phi``), mean ± standard error over training seeds, the per-seed values beside;
* for NDM, what its ``F`` does (:mod:`ndm.analysis.diagnostics`): the displacement
  ``E||F(x, t) - x||^2 / E||x||^2`` at ``t = 0.5`` and ``1``, and the NELBO gap when ``F``
  is replaced by the identity at evaluation. Usage::

    python -m benchmarks.mixture_1d --out benchmarks/results/mixture_1d.md
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from benchmarks.harness import cached_row, environment, mean_and_stderr, report, trained_model
from ndm.analysis.diagnostics import identity_transform_gap, transform_displacement
from ndm.analysis.mixture_oracle import GaussianMixture, MixtureOracle
from ndm.data.atomic import atomic_write
from ndm.data.points import save_points
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.transforms import IdentityTransform
from ndm.models.ndm import NDM
from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig

MIXTURE = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.4, 0.4])
LABELS = {"identity": "DDPM (F = x)", "learned": "NDM (learned F)"}


def _gap(model: NDM, x: torch.Tensor, draws: int) -> tuple[float, float]:
    """Mean and standard error over ``x [N, 1]`` of ``NELBO(x) + log p(x)``, nats: the
    NELBO in float32, averaged per point over ``draws`` noise draws from generators seeded
    ``0 .. draws - 1``, the same for every model (so that gaps of models are paired)."""
    with torch.no_grad():
        nelbo = sum(
            model.nelbo(x.float(), generator=torch.Generator().manual_seed(k)).total.double()
            for k in range(draws)
        )
    gap = nelbo / draws + MIXTURE.log_prob(x)
    return gap.mean().item(), gap.std().item() / math.sqrt(gap.numel())


def _measure(model: NDM, test_x: torch.Tensor, draws: int) -> dict:
    """The gap of :func:`_gap`; for a learned ``F`` also its displacement at ``t = 0.5, 1``
    and the NELBO gap with ``F = x`` at evaluation."""
    row = {"gap": _gap(model, test_x, draws)[0]}
    if not isinstance(model.process.transform, IdentityTransform):
        x = test_x.float()
        row["moved"] = transform_displacement(model, x, torch.tensor([0.5, 1.0])).tolist()
        row["identity_gap"] = identity_transform_gap(model, x)["gap"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num-steps", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-eval", type=int, default=4000)
    parser.add_argument("--draws", type=int, default=8, help="noise draws per test point")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "mixture-1d")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    began = time.perf_counter()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    points = args.runs_dir / "mixture.npz"
    train_x = MIXTURE.sample(args.n_train, 1, seed=0).float()
    test_x = MIXTURE.sample(args.n_eval, 1, seed=1)
    if not points.exists():
        atomic_write(points, lambda file: save_points(file, train_x, test_x.float()))
    base = RunConfig(
        DataConfig("points", path=str(points.resolve())),
        # time embedded at 1000 t, the default when these rows were measured (now T t)
        ModelConfig(objective="discrete", hidden=args.hidden, depth=args.depth, time_scale=1000.0),
        TrainConfig(steps=args.steps, batch_size=512, lr=2e-3, warmup_steps=200,
                    checkpoint_every=args.steps, log_every=100),
        EvalConfig(),
    )  # fmt: skip
    entropy = MIXTURE.entropy()
    exact_nll = -MIXTURE.log_prob(test_x)
    lines = [
        f"# 1-D two-mode mixture in discrete time: NDM vs DDPM vs the best DDPM, "
        f"{args.seeds} seeds, {args.steps} steps",
        "",
        f"Data 0.5 N(-2, 0.4^2) + 0.5 N(2, 0.4^2), entropy {entropy:.4f} nats (quadrature); "
        f"{args.n_train} training points, {args.n_eval} test points of exact NLL "
        f"{exact_nll.mean():.4f} ± {exact_nll.std() / math.sqrt(args.n_eval):.4f}. MLP "
        f"{args.hidden}x{args.depth} for x_theta (and F_phi), schedule {base.model.schedule}, "
        f"reverse variance {base.model.reverse_variance}, time embedded at "
        f"{base.model.time_scale:.0f} t, batch {base.train.batch_size}, lr "
        f"{base.train.lr}. Gap: NELBO (all T terms, float32, the mean of {args.draws} noise "
        "draws per test point, the same draws for every model) minus the exact NLL, nats, "
        "paired per test point (± its standard error over points for the best DDPM, ± the "
        "standard error over seeds for trained models); F: displacement E||F(x,t) - x||^2 / E||x||^2 at t = 0.5, 1, and the "
        f"NELBO gap with F = x at evaluation. {environment()}"
        f".",
        "",
        "| T | model | NELBO − NLL | per seed | F moved (t = 0.5, 1) | NELBO(F = x) − NELBO |",
        "|---|---|---|---|---|---|",
    ]
    for num_steps in args.num_steps:
        cfg = replace(base, model=replace(base.model, num_steps=num_steps))
        for transform in LABELS:
            gaps, moved, identity_gaps = [], [], []
            for seed in range(args.seeds):
                run_cfg = replace(
                    cfg,
                    model=replace(cfg.model, transform=transform),
                    train=replace(cfg.train, seed=seed),
                )
                run_dir = args.runs_dir / f"{transform}-T{num_steps}-seed{seed}"
                model = trained_model(run_cfg, run_dir).eval()
                key = f"draws={args.draws},n_eval={args.n_eval}"
                row = cached_row(run_dir, key, partial(_measure, model, test_x, args.draws))
                gaps.append(row["gap"])
                if transform == "learned":
                    moved.append(row["moved"])
                    identity_gaps.append(row["identity_gap"])
            if transform == "identity":
                schedule = copy.deepcopy(model.process.schedule)
                oracle = NDM(
                    NeuralDiffusion(schedule, IdentityTransform()),
                    MixtureOracle(schedule, MIXTURE),
                    "discrete",
                    num_steps,
                    decoder=model.decoder,
                )
                mean, stderr = _gap(oracle, test_x, args.draws)
                lines.append(
                    f"| {num_steps} | best DDPM (exact posterior) | {mean:.3f} ± {stderr:.3f} "
                    "| | | |"
                )
            f_moved = (
                " / ".join(mean_and_stderr([m[k] for m in moved], ".2e") for k in range(2))
                if moved
                else ""
            )
            f_gap = mean_and_stderr(identity_gaps) if identity_gaps else ""
            lines.append(
                f"| {num_steps} | {LABELS[transform]} | {mean_and_stderr(gaps)} | "
                f"{', '.join(f'{g:.3f}' for g in gaps)} | {f_moved} | {f_gap} |"
            )
            # the table so far, rewritten after every row
            report("\n".join(lines), args.out)
    report("\n".join([*lines, "", f"Total {time.perf_counter() - began:.0f} s."]), args.out)


if __name__ == "__main__":
    main()
