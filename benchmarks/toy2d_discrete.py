"""NDM against DDPM in discrete time on a 2-D toy dataset: ``T = 10`` and ``T = 1000``, seeds.

The paper claims that a learned ``F`` helps most when ``T`` is small. Each model (learned
transform, identity) is trained with the discrete objective for each ``T`` and each training
seed on the same budget and data, then scored on the same test points: the discrete NELBO
(the sum of all ``T`` terms) and the ODE NLL (exact divergence, dopri5), in nats. Rows give
the mean over seeds ± the standard error over seeds; the per-seed values follow. Usage::

    python -m benchmarks.toy2d_discrete --steps 600 --n-eval 300 \
        --out benchmarks/results/toy2d_discrete.md
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.harness import environment, markdown_table, mean_and_stderr, report, trained_model
from ndm.evaluation.evaluate import evaluate
from ndm.runs.config import RunConfig
from ndm.runs.inputs import load_data

LABELS = {"learned": "NDM (learned F)", "identity": "DDPM (F = x)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="checkerboard")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num-steps", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--tol", type=float, default=1e-4, help="dopri5 rtol = atol of the NLL")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="the networks' time embedding sees this times t (default: T t)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "toy2d-discrete")
    args = parser.parse_args()

    began = time.perf_counter()
    base = RunConfig()
    base = replace(
        base,
        data=replace(base.data, dataset=args.dataset),
        model=replace(base.model, objective="discrete", time_scale=args.time_scale),
        train=replace(base.train, steps=args.steps, checkpoint_every=args.steps),
        eval=replace(base.eval, n_eval=args.n_eval, rtol=args.tol, atol=args.tol),
    )
    splits = load_data(base.data)
    results: dict[tuple[int, str], list[dict]] = {}
    for num_steps in args.num_steps:
        for transform in LABELS:
            for seed in range(args.seeds):
                cfg = replace(
                    base,
                    model=replace(base.model, transform=transform, num_steps=num_steps),
                    train=replace(base.train, seed=seed),
                )
                run_dir = args.runs_dir / f"{transform}-T{num_steps}-seed{seed}"
                model = trained_model(cfg, run_dir)
                metrics = evaluate(model.eval(), splits, cfg.eval)
                results.setdefault((num_steps, transform), []).append(metrics)
                print(num_steps, transform, seed, metrics["nelbo"], metrics["nll"], flush=True)

    m = base.model
    lines = [
        f"# {args.dataset} in discrete time: NDM vs DDPM, {args.seeds} seeds, {args.steps} steps",
        "",
        f"MLP {m.hidden}x{m.depth} for x_theta (and F_phi), schedule {m.schedule}, reverse "
        f"variance {m.reverse_variance} (learned), time embedded at "
        f"{'T' if m.time_scale is None else f'{m.time_scale:.0f}'} t, batch {base.train.batch_size}, lr "
        f"{base.train.lr}, EMA {base.train.ema_decay}; {args.n_eval} test points, entropy "
        f"{splits.entropy:.3f} nats. NELBO: all T terms; NLL: probability-flow ODE, exact "
        f"divergence, dopri5 rtol=atol={args.tol}. {environment()}"
        f"; total "
        f"{time.perf_counter() - began:.0f} s.",
        "",
    ]
    table = []
    for (num_steps, transform), runs in results.items():
        nelbos, nlls = [r["nelbo"] for r in runs], [r["nll"] for r in runs]
        per_seed = [", ".join(f"{v:.3f}" for v in values) for values in (nelbos, nlls)]
        table.append(
            [
                num_steps,
                LABELS[transform],
                mean_and_stderr(nelbos),
                mean_and_stderr(nlls),
                *per_seed,
            ]
        )
    header = ["T", "model", "NELBO (nats)", "NLL (nats)", "NELBO per seed", "NLL per seed"]
    lines += markdown_table(header, table)
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
