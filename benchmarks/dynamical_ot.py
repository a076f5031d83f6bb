"""Dynamical optimal transport: are the probability-flow paths of NDM straighter than DDPM's?

On a 1-D two-component Gaussian mixture and the 2-D ``8gaussians`` data, trains NDM
(learned ``F``) and DDPM (``F = x``), each without and with the kinetic-energy penalty
(``--kinetic-weight``), same networks, objective, steps and seeds. For each model it draws
``N`` prior points ``z_1``, integrates the probability-flow ODE to ``z_0`` (adaptive dopri5,
``rtol = atol = 1e-5``) and reports, in squared data units per point:

- the transport cost of the ODE map ``E ||z_0 - z_1||^2`` and the exact optimal transport
  cost between the same ``z_1`` and ``z_0`` samples (sorting in 1-D, POT in 2-D);
- the kinetic energy ``E int ||dz/dt||^2 dt`` and the mean straightness
  ``||z_0 - z_1||^2 / int ||dz/dt||^2 dt`` and chord-to-length ratio of the paths, the
  velocity evaluated along the path on a time grid denser near ``t = 0`` (trapezoid rule);
- the solver's NFE, the test NELBO (nats per example; for a penalised model also its
  difference to the unpenalised model of the same transform, paired over test points and
  time draws) and the exact OT cost between the samples and as many test points (sample
  quality on the same scale).

Writes the table (``--out``) and a figure of paths (``--figure``). Usage::

    python -m benchmarks.dynamical_ot --out benchmarks/results/dynamical_ot.md \\
        --figure benchmarks/results/dynamical_ot.png
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.harness import environment, report
from ndm.analysis.transport import (  # noqa: E402
    FlowPaths,
    chord_length_ratio,
    exact_ot_cost,
    kinetic_energy,
    map_transport_cost,
    path_straightness,
    probability_flow_paths,
)
from ndm.data.toy2d import toy2d_splits  # noqa: E402
from ndm.models.ndm import NDM  # noqa: E402
from ndm.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from ndm.runs.training import train  # noqa: E402

MIXTURE_1D = {"weights": (0.5, 0.5), "means": (-2.0, 2.0), "std": 0.4}


def two_gaussians_1d(n: int, seed: int) -> Tensor:
    """``n`` draws ``[n, 1]`` (float32) of ``0.5 N(-2, 0.4^2) + 0.5 N(2, 0.4^2)``."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor(MIXTURE_1D["weights"])
    component = torch.multinomial(weights, n, replacement=True, generator=g)
    means = torch.tensor(MIXTURE_1D["means"])[component]
    return (means + MIXTURE_1D["std"] * torch.randn(n, generator=g))[:, None]


def load_dataset(name: str, n_train: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train and test points ``[N, D]`` of ``name``: ``mixture1d`` or a toy 2-D dataset."""
    if name == "mixture1d":
        return two_gaussians_1d(n_train, 2 * seed), two_gaussians_1d(n_test, 2 * seed + 1)
    return toy2d_splits(name, n_train, n_test, seed)


def path_times(num_intervals: int) -> Tensor:
    """Decreasing grid ``t_k = (k / S)^2``, ``k = S, ..., 0``: denser near ``t = 0``, where the
    velocity of the linear VP schedule changes fastest."""
    return torch.linspace(1.0, 0.0, num_intervals + 1) ** 2


@dataclass(frozen=True)
class Row:
    dataset: str
    label: str
    values: dict[str, float]
    paths: FlowPaths


def measure(
    model: NDM, test: Tensor, z1: Tensor, times: Tensor, n_eval: int, time_samples: int
) -> tuple[dict[str, float], FlowPaths, Tensor]:
    """Transport, straightness and NFE of the model's ODE from ``z1``, and its test NELBO
    (also per test point, ``[n_eval]``, drawn with a fixed seed)."""
    model.eval()
    paths = probability_flow_paths(model.process, model.predictor, z1, times, 1e-5, 1e-5)
    z0 = paths.path[-1]
    map_cost, ot_cost = map_transport_cost(z1, z0), exact_ot_cost(z1, z0)
    samples = z0[: test.shape[0]]
    nelbo = model.nelbo(test[:n_eval], time_samples, torch.Generator().manual_seed(0)).total
    values = {
        "nelbo": float(nelbo.mean()),
        "nelbo_stderr": float(nelbo.std()) / math.sqrt(nelbo.numel()),
        "map_cost": map_cost,
        "ot_cost": ot_cost,
        "kinetic": float(kinetic_energy(paths.velocity, times).mean()),
        "straightness": float(path_straightness(paths.path, paths.velocity, times).mean()),
        "chord_length": float(chord_length_ratio(paths.path, paths.velocity, times).mean()),
        "nfe": paths.nfe,
        "w2_test": exact_ot_cost(samples, test[: samples.shape[0]]),
    }
    return values, paths, nelbo


def plot(rows: list[Row], path: Path, max_paths: int) -> None:
    """Paths side by side: one row of panels per dataset, one column per model; 1-D as
    ``z`` against ``t``, 2-D in the plane (start points black, end points red)."""
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    labels = list(dict.fromkeys(r.label for r in rows))
    fig, axes = plt.subplots(
        len(datasets), len(labels), figsize=(4 * len(labels), 4 * len(datasets)), squeeze=False
    )
    for r in rows:
        ax = axes[datasets.index(r.dataset), labels.index(r.label)]
        z = r.paths.path[:, :max_paths].float()
        title = f"{r.label}\nstraightness {r.values['straightness']:.3f}, NFE {r.values['nfe']}"
        if z.shape[-1] == 1:
            t = r.paths.times.float()
            ax.plot(t, z[..., 0], color="tab:blue", alpha=0.3, linewidth=0.6)
            ax.set_xlabel("t")
            ax.set_ylabel("z")
            ax.invert_xaxis()
        else:
            ax.plot(z[..., 0], z[..., 1], color="tab:blue", alpha=0.25, linewidth=0.5)
            ax.scatter(z[0, :, 0], z[0, :, 1], s=3, color="black", zorder=3, label="t = 1")
            ax.scatter(z[-1, :, 0], z[-1, :, 1], s=3, color="tab:red", zorder=3, label="t = 0")
            ax.set_aspect("equal")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{r.dataset}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| data | model | test NELBO (nats) | NELBO cost of the penalty | ODE map cost "
        "| exact OT cost | map / OT | kinetic energy | straightness | chord / length | NFE "
        "| OT cost to test data | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r.values
        cost = "-"
        if "penalty_cost" in v:
            cost = f"{v['penalty_cost']:+.3f} ± {v['penalty_cost_stderr']:.3f}"
        lines.append(
            f"| {r.dataset} | {r.label} | {v['nelbo']:.3f} ± {v['nelbo_stderr']:.3f} | {cost} "
            f"| {v['map_cost']:.4f} | {v['ot_cost']:.4f} | {v['map_cost'] / v['ot_cost']:.4f} "
            f"| {v['kinetic']:.3f} | {v['straightness']:.3f} | {v['chord_length']:.3f} "
            f"| {v['nfe']} | {v['w2_test']:.4f} | {v['train_seconds']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mixture1d", "8gaussians"])
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every model")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--kinetic-weight", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=1000, help="prior points z_1 per model")
    parser.add_argument("--n-eval", type=int, default=1000, help="test points of the NELBO")
    parser.add_argument("--time-samples", type=int, default=32, help="NELBO draws per point")
    parser.add_argument("--grid", type=int, default=200, help="intervals of the path grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-paths", type=int, default=150, help="paths drawn per panel")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--figure", type=Path, default=None, help="figure of the paths")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs") / time.strftime("dynamical-ot-%Y%m%d-%H%M%S"),
        help="where the run folders are kept",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    base = RunConfig(
        DataConfig(),
        ModelConfig(hidden=args.hidden, depth=args.depth, schedule="linear"),
        TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            checkpoint_every=args.steps,
            device="cpu",
        ),
    )
    penalty = {"kinetic_weight": args.kinetic_weight}
    variants = [
        ("ndm", "NDM (learned F)", {"transform": "learned"}),
        ("ddpm", "DDPM (F = x)", {"transform": "identity"}),
        (
            "ndm-kinetic",
            f"NDM + kinetic {args.kinetic_weight:g}",
            {"transform": "learned"} | penalty,
        ),
        (
            "ddpm-kinetic",
            f"DDPM + kinetic {args.kinetic_weight:g}",
            {"transform": "identity"} | penalty,
        ),
    ]
    times = path_times(args.grid)
    rows, floors, targets = [], {}, {}
    for dataset in args.datasets:
        train_x, test_x = load_dataset(dataset, base.data.n_train, base.data.n_test, 0)
        z1 = torch.randn(args.n, train_x.shape[1], generator=torch.Generator().manual_seed(1))
        floors[dataset] = exact_ot_cost(train_x[: args.n], test_x[: args.n])
        targets[dataset] = exact_ot_cost(z1, test_x[: args.n])
        unpenalised: dict[str, Tensor] = {}
        for name, label, options in variants:
            cfg = replace(base, model=replace(base.model, **options))
            started = time.perf_counter()
            model = train(cfg, args.runs_dir / dataset / name, train_data=train_x)
            values = {"train_seconds": time.perf_counter() - started}
            measured, paths, nelbo = measure(
                model, test_x, z1, times, args.n_eval, args.time_samples
            )
            values |= measured
            if "kinetic_weight" in options:
                gap = nelbo - unpenalised[options["transform"]]
                values["penalty_cost"] = float(gap.mean())
                values["penalty_cost_stderr"] = float(gap.std()) / math.sqrt(gap.numel())
            else:
                unpenalised[options["transform"]] = nelbo
            rows.append(Row(dataset, label, values, paths))
            print(table(rows)[-1], flush=True)

    m = base.model
    command = "python " + " ".join(Path(a).as_posix() for a in sys.argv)
    lines = [
        "# Dynamical optimal transport: NDM against DDPM",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{environment(args.threads)}; total {time.perf_counter() - began:.0f} s.",
        "",
        f"Every model: MLP {m.hidden}x{m.depth} for x_theta (and F_phi), schedule {m.schedule}, "
        f"{m.training_objective} objective, time sampling {m.time_sampling}, {args.steps} steps of "
        f"batch {args.batch_size}, lr {base.train.lr}, EMA {base.train.ema_decay}, seed "
        f"{base.train.seed}. Data: `mixture1d` = 0.5 N(-2, 0.4^2) + 0.5 N(2, 0.4^2); "
        f"`8gaussians` as in `ndm.data.toy2d`. The kinetic rows add "
        f"{args.kinetic_weight:g} x E_t ||v(z_t, t)||^2 (probability-flow velocity, t ~ U[0, 1]) "
        "to the NELBO in training.",
        "",
        f"{args.n} prior points z_1 (the same for every model of a dataset), probability-flow "
        "ODE to z_0 with dopri5 at rtol = atol = 1e-5. Costs in squared data units per point: "
        "ODE map cost = mean ||z_0 - z_1||^2; exact OT cost between the z_1 and z_0 samples "
        "(sorting in 1-D, POT's exact solver in 2-D); kinetic energy = mean int ||dz/dt||^2 dt; "
        "straightness = mean over paths of ||z_0 - z_1||^2 / int ||dz/dt||^2 dt (1: straight at "
        "constant speed); chord / length = mean ||z_0 - z_1|| / int ||dz/dt|| dt (1: straight); "
        f"velocity from the drift on {args.grid + 1} times t = (k / {args.grid})^2, trapezoid "
        f"rule. Test NELBO: {args.n_eval} test points x {args.time_samples} time draws, ± "
        "standard error over points; the same draws for every model, so the NELBO cost of the "
        "penalty (penalised minus unpenalised model of the same transform, per point) has a "
        "smaller standard error. OT cost to test data: exact OT cost between the z_0 samples "
        "and as many test points.",
        "",
        *table(rows),
        "",
        f"Exact OT cost from the same {args.n} z_1 to as many test points (what the ODE map "
        "cost of a model that generates the data would approach): "
        + ", ".join(f"{name} {cost:.4f}" for name, cost in targets.items())
        + ". Floor of the column 'OT cost to test data', the exact OT cost between as many "
        "training and test points: "
        + ", ".join(f"{name} {cost:.4f}" for name, cost in floors.items())
        + ".",
    ]
    text = "\n".join(lines)
    report(text, args.out)
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.figure, args.max_paths)


if __name__ == "__main__":
    main()
