"""NDM against the DDPM baseline (identity transform) on a 2-D toy dataset, same budget.

All models share every hyper-parameter and the objective; only the transform differs
(``--transforms``: the time-conditioned learned ``F``, the separable one, the identity).
Prints one table: test NLL (probability-flow ODE, exact divergence, dopri5), NELBO, the
data's entropy (the limit for any model), the ODE sampler's NFE and the training time
per step. Usage::

    python -m benchmarks.toy2d --steps 8000 --out benchmarks/results/toy2d.md
    python -m benchmarks.toy2d --steps 3000 --transforms learned separable identity \
        --out benchmarks/results/toy2d_separable.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.harness import environment, markdown_table, report
from ndm.data.loading import Splits
from ndm.evaluation.evaluate import evaluate
from ndm.runs.config import RunConfig
from ndm.runs.folder import METRICS, read_metrics
from ndm.runs.inputs import load_data
from ndm.runs.training import train

LABELS = {
    "learned": "NDM (learned F)",
    "separable": "NDM (separable F, K = {basis})",
    "identity": "DDPM (F = x)",
}


def run(cfg: RunConfig, run_dir: Path, splits: Splits, n_samples: int) -> dict:
    """Train one model, then evaluate likelihoods and the ODE sampler's NFE."""
    began = time.perf_counter()
    model = train(cfg, run_dir)
    wall = time.perf_counter() - began
    step_time = statistics.median(
        line["seconds_per_step"] for line in read_metrics(run_dir / METRICS)
    )
    metrics = evaluate(model, splits, cfg.eval)
    generator = torch.Generator().manual_seed(1)
    sample = model.sample(
        (n_samples, *splits.shape), "ode", steps=1, generator=generator, rtol=1e-5, atol=1e-5
    )
    return metrics | {"ode_nfe": sample.nfe, "step_seconds": step_time, "train_wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="checkerboard")
    parser.add_argument("--steps", type=int, default=RunConfig().train.steps)
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs") / time.strftime("toy2d-%Y%m%d-%H%M%S"),
        help="where the run folders are kept (for ndm sample / ndm eval)",
    )
    parser.add_argument(
        "--transforms", nargs="+", choices=list(LABELS), default=["learned", "identity"]
    )
    args = parser.parse_args()

    base = RunConfig()
    base = replace(
        base,
        data=replace(base.data, dataset=args.dataset),
        model=replace(base.model, schedule="linear"),  # the schedule of the committed table
        train=replace(base.train, steps=args.steps, checkpoint_every=args.steps),
        eval=replace(base.eval, n_eval=args.n_eval),
    )
    splits = load_data(base.data)
    rows = {}
    for transform in args.transforms:
        cfg = replace(base, model=replace(base.model, transform=transform))
        label = LABELS[transform].format(basis=cfg.model.transform_basis)
        rows[label] = run(cfg, args.runs_dir / transform, splits, args.n_samples)

    limit = splits.entropy
    m = base.model
    lines = [
        f"# {args.dataset}: NDM vs DDPM, {args.steps} steps each",
        "",
        f"Same settings for all: MLP {m.hidden}x{m.depth} for x_theta (and F_phi), schedule "
        f"{m.schedule}, {m.training_objective} objective, time sampling {m.time_sampling}, batch "
        f"{base.train.batch_size}, lr {base.train.lr}, EMA {base.train.ema_decay}. "
        f"Test set: {args.n_eval} points. {environment()}"
        f".",
        "",
    ]
    header = ["model", "test NLL (nats)", "NELBO (nats)", "entropy limit"]
    header += ["ODE NFE (rtol=atol=1e-5)", "s / training step"]
    limit_text = f"{limit:.3f}" if limit is not None else "-"
    table = [
        [label, f"{r['nll']:.3f} ± {r['nll_stderr']:.3f}", f"{r['nelbo']:.3f} ± "
         f"{r['nelbo_stderr']:.3f}", limit_text, r["ode_nfe"], f"{r['step_seconds']:.4f}"]
        for label, r in rows.items()
    ]  # fmt: skip
    lines += markdown_table(header, table)
    walls = ", ".join(f"{label} {r['train_wall']:.0f} s" for label, r in rows.items())
    lines += ["", f"Training wall time: {walls}."]
    ddpm = rows.get(LABELS["identity"])
    if ddpm is not None:
        ratios = ", ".join(
            f"{label} {r['step_seconds'] / ddpm['step_seconds']:.2f}"
            for label, r in rows.items()
            if r is not ddpm
        )
        lines[-1] += f" Step-time ratio to DDPM: {ratios}."
    table = "\n".join(lines)
    report(table, args.out)


if __name__ == "__main__":
    main()
