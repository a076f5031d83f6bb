"""DDPM, NDM, NFDM, flow matching and NFDM-OT on a 2-D toy dataset or the 1-D mixture at one
budget, over seeds.

Every model has the same predictor (an MLP of ``--hidden`` x ``--depth``), batch, optimiser
and steps; NDM's ``F`` and NFDM's mean-scale network are MLPs of the same size. DDPM, NDM
and NFDM train the continuous NELBO on the log-SNR schedule. Flow matching (FM: ``F = x``
on the ``fm_ot`` schedule) and NFDM-OT (NFDM's mean and scale around it, with the curvature
penalty) train the velocity objective of a deterministic reverse process, with
x-prediction and uniform time, as the NFDM authors anchor NFDM-OT; their NELBO is that of
the SDE sampler with the schedule's volatility. Per model, the mean ± standard error over
seeds of:

- the test NLL (probability-flow ODE, exact divergence, dopri5) and NELBO, in nats, beside
  the data's entropy;
- the training step's time and the peak memory its forward and backward pass adds at the
  batch (torch's CPU allocations, from the profiler; measured each time, not cached);
- the probability-flow paths from 1000 noise draws: the map's transport cost
  ``mean ||z_0 - z_1||^2``, the kinetic energy, and the straightness
  ``||z_0 - z_1||^2 / E`` (1 for straight paths at constant speed);
- few-step sampling: the energy distance to held-out data and (checkerboard) the share of
  samples on the squares, with DDIM (eta 0) and Euler steps on the ODE at each NFE of
  ``--nfe``, and with adaptive dopri5.

``--dataset mixture1d`` is the two-mode mixture of :mod:`benchmarks.mixture_1d`, whose
entropy is exact.

Runs are kept under ``--runs-dir`` and every measured row is cached there, so a rerun (or
an interrupted one) only computes what is missing. Usage::

    python -m benchmarks.nfdm_toy --hidden 32 --depth 2 --steps 2000 --seeds 0 1 2 \
        --out benchmarks/results/nfdm_checkerboard_small.md
    python -m benchmarks.nfdm_toy --dataset mixture1d --hidden 32 --depth 2 --steps 2000 \
        --out benchmarks/results/nfdm_mixture1d_small.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.harness import (
    cached_row,
    environment,
    markdown_table,
    mean_and_stderr,
    report,
    trained_model,
)
from benchmarks.mixture_1d import MIXTURE
from ndm.analysis.transport import (
    kinetic_energy,
    map_transport_cost,
    path_straightness,
    probability_flow_paths,
)
from ndm.data.atomic import atomic_write
from ndm.data.loading import Splits
from ndm.data.points import save_points
from ndm.data.toy2d import DATASETS, log_density
from ndm.diffusion.flow import FlowDiffusion
from ndm.diffusion.transforms import IdentityTransform
from ndm.evaluation.evaluate import evaluate
from ndm.models.ndm import NDM
from ndm.plots.points import plot_scale, plot_transform
from ndm.runs.config import DataConfig, ModelConfig, RunConfig
from ndm.runs.folder import METRICS, read_metrics
from ndm.runs.inputs import load_data
from ndm.runs.memory import pass_bytes

#: The settings of a deterministic reverse process on flow matching's paths.
FLOW = {"schedule": "fm_ot", "parameterisation": "x", "time_sampling": "uniform"}
#: Model name -> its model settings.
MODELS = {
    "DDPM": {"process": "ndm", "transform": "identity"},
    "NDM": {"process": "ndm", "transform": "learned"},
    "NFDM": {"process": "nfdm", "transform": "learned"},
    "FM": {"process": "ndm", "transform": "identity", "objective": "velocity", **FLOW},
    "NFDM-OT": {"process": "nfdm_ot", "transform": "learned", **FLOW},
}
PATH_TIMES = 65
SAMPLES = 1000


def models_text(names: list[str], bound: ModelConfig, curvature: float) -> str:
    """The sentences that describe the models of ``names``: the NELBO-trained ones with
    ``bound``'s schedule, objective and time sampling, the flow models with :data:`FLOW`'s
    and NFDM-OT's ``curvature`` weight (each sentence only if it has models)."""
    flows = [name for name in names if MODELS[name].items() >= FLOW.items()]
    bounds = [name for name in names if name not in flows]
    text = ""
    if bounds:
        text += (
            f"{', '.join(bounds)}: schedule {bound.schedule}, {bound.training_objective} "
            f"objective, time sampling {bound.time_sampling}. "
        )
    if flows:
        settings = ", ".join(f"{key} {value}" for key, value in FLOW.items())
        text += (
            f"{', '.join(flows)}: {settings}, velocity objective (g = 0; the NELBO is the SDE "
            "sampler's with the schedule's volatility)"
        )
        text += f"; NFDM-OT's curvature weight {curvature:g}. " if "NFDM-OT" in flows else ". "
    return text


def energy_distance(x: Tensor, y: Tensor) -> float:
    """``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` between the samples ``x [N, D]`` and
    ``y [M, D]`` (V-statistic); 0 only for equal distributions."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sample_quality(model: NDM, held_out: Tensor, dataset: str, sampler: str, steps: int,
                   **options: object) -> dict[str, float]:  # fmt: skip
    """Energy distance to ``held_out [N, D]`` and (checkerboard) share on the data's support
    of ``SAMPLES`` samples drawn with a fixed seed, and the sampler's NFE."""
    generator = torch.Generator().manual_seed(1)
    result = model.sample((SAMPLES, held_out.shape[1]), sampler, steps, generator, **options)
    quality = {"energy": energy_distance(result.sample, held_out), "nfe": result.nfe}
    if dataset == "checkerboard":
        quality["support"] = float(
            torch.isfinite(log_density(dataset, result.sample)).double().mean()
        )
    return quality


def measure(cfg: RunConfig, run_dir: Path, splits: Splits, nfes: list[int], dataset: str) -> dict:
    """Every figure of one trained model on ``splits`` (trained here if its run has not
    finished)."""
    model = trained_model(cfg, run_dir)
    model.eval()
    metrics = evaluate(model, splits, cfg.eval)
    steps = [line["seconds_per_step"] for line in read_metrics(run_dir / METRICS)]
    z1 = torch.randn(SAMPLES, *splits.shape, generator=torch.Generator().manual_seed(2))
    times = torch.linspace(1.0, 0.0, PATH_TIMES)
    paths = probability_flow_paths(model.process, model.predictor, z1, times)
    held_out = splits.test[:SAMPLES]
    quality = {
        f"{sampler}_{nfe}": sample_quality(model, held_out, dataset, sampler, nfe, **options)
        for nfe in nfes
        for sampler, options in (("ddim", {}), ("ode", {"method": "euler"}))
    }
    quality["adaptive"] = sample_quality(model, held_out, dataset, "ode", 1)
    return {
        "nll": metrics["nll"],
        "nelbo": metrics["nelbo"],
        "entropy": MIXTURE.entropy() if dataset == "mixture1d" else splits.entropy,
        "step_seconds": statistics.median(steps),
        "map_cost": map_transport_cost(z1, paths.path[-1]),
        "kinetic": float(kinetic_energy(paths.velocity, times).mean()),
        "straightness": float(path_straightness(paths.path, paths.velocity, times).mean()),
        "quality": quality,
    }


def peak_memory_mib(model: NDM, batch: Tensor) -> float:
    """The peak memory, in MiB, one training pass of ``model`` adds on ``batch``."""
    generator = torch.Generator().manual_seed(0)
    return pass_bytes(model, batch, generator, False, peak=True) / 2**20


def figures(model: NDM, data: Tensor, out: Path, name: str) -> None:
    """Beside ``out``: Figure 2a's plot of a learned transform, and an NFDM's learned
    scale, on the 2-D ``data [N, 2]``."""
    stem = out.with_name(f"{out.stem}_{name.lower()}")
    if not isinstance(model.process.transform, IdentityTransform):
        plot_transform(model, data, f"{stem}_transform.png")
    if isinstance(model.process, FlowDiffusion):
        plot_scale(model.process, data, f"{stem}_scale.png")


def data_config(dataset: str, runs_dir: Path) -> DataConfig:
    """A toy 2-D dataset, or the 1-D mixture as a points file written once under
    ``runs_dir``."""
    if dataset != "mixture1d":
        return replace(RunConfig().data, dataset=dataset)
    points = runs_dir / "mixture.npz"
    if not points.exists():
        runs_dir.mkdir(parents=True, exist_ok=True)
        train_x = MIXTURE.sample(100_000, 1, seed=0).float()
        test_x = MIXTURE.sample(10_000, 1, seed=1).float()
        atomic_write(points, lambda file: save_points(file, train_x, test_x))
    return DataConfig("points", path=str(points.resolve()))


def summary(rows: dict[str, list[dict]], key: str, digits: str = ".3f") -> dict[str, str]:
    """``mean ± standard error`` over seeds of ``key`` for each model (the value alone for
    one seed)."""
    return {name: mean_and_stderr([r[key] for r in runs], digits) for name, runs in rows.items()}


def tables(rows: dict[str, list[dict]], nfes: list[int], dataset: str) -> list[str]:
    """The likelihood-and-cost table and the few-step sampling table."""
    names = list(rows)
    entropy = next(iter(rows.values()))[0]["entropy"]
    ddpm_time = statistics.mean(r["step_seconds"] for r in rows.get("DDPM", rows[names[0]]))
    columns = {
        "test NLL (nats)": summary(rows, "nll"),
        "NELBO (nats)": summary(rows, "nelbo"),
        "s / step": summary(rows, "step_seconds", ".4f"),
        "peak memory (MiB)": summary(rows, "peak_mib", ".1f"),
        "transport cost": summary(rows, "map_cost"),
        "kinetic energy": summary(rows, "kinetic"),
        "straightness": summary(rows, "straightness"),
    }
    header = ["model", *columns, "step time / DDPM's"]
    body = [
        [name, *(column[name] for column in columns.values()),
         f"{statistics.mean(r['step_seconds'] for r in rows[name]) / ddpm_time:.2f}"]
        for name in names
    ]  # fmt: skip
    lines = [f"Entropy of the data: {entropy:.3f} nats.", "", *markdown_table(header, body)]
    support = dataset == "checkerboard"
    what = "energy distance" + (" / share on the squares" if support else "")
    header = ["sampler", "NFE", *names]
    body = []
    for sampler, label in (("ddim", "DDIM"), ("ode", "Euler ODE")):
        for nfe in nfes:
            body.append([label, nfe, *(_quality(rows[n], f"{sampler}_{nfe}", support)
                                      for n in names)])  # fmt: skip
    adaptive_nfe = {n: statistics.mean(r["quality"]["adaptive"]["nfe"] for r in rows[n])
                    for n in names}  # fmt: skip
    body.append(["dopri5 (adaptive)", " / ".join(f"{adaptive_nfe[n]:.0f}" for n in names),
                 *(_quality(rows[n], "adaptive", support) for n in names)])  # fmt: skip
    lines += ["", f"Few-step sampling, {SAMPLES} samples against held-out data: {what} "
              "(mean over seeds; lower energy is better).", "",
              *markdown_table(header, body)]  # fmt: skip
    return lines


def _quality(runs: list[dict], key: str, support: bool) -> str:
    energy = statistics.mean(r["quality"][key]["energy"] for r in runs)
    if not support:
        return f"{energy:.4f}"
    share = statistics.mean(r["quality"][key]["support"] for r in runs)
    return f"{energy:.4f} / {share:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="checkerboard", choices=[*DATASETS, "mixture1d"])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--curvature-weight", type=float, default=None, help="NFDM-OT's (auto: the default)"
    )
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs") / time.strftime("nfdm-toy-%Y%m%d-%H%M%S"),
        help="where the run folders and their measured rows are kept",
    )
    args = parser.parse_args()

    base = RunConfig()
    base = replace(
        base,
        data=data_config(args.dataset, args.runs_dir),
        model=replace(base.model, hidden=args.hidden, depth=args.depth),
        train=replace(base.train, steps=args.steps, checkpoint_every=args.steps),
        eval=replace(base.eval, n_eval=args.n_eval),
    )
    splits = load_data(base.data)
    batch = splits.train[: base.train.batch_size]
    rows: dict[str, list[dict]] = {}
    for name in args.models:
        settings = MODELS[name]
        if settings["process"] == "nfdm_ot":
            settings = settings | {"curvature_weight": args.curvature_weight}
        for seed in args.seeds:
            cfg = replace(
                base,
                model=replace(base.model, **settings),
                train=replace(base.train, seed=seed),
            )
            run_dir = args.runs_dir / f"{name}-seed{seed}"
            key = f"{args.steps} steps, nfe {args.nfe}, n_eval {args.n_eval}"
            row = cached_row(
                run_dir,
                key,
                lambda c=cfg, r=run_dir: measure(c, r, splits, args.nfe, args.dataset),
            )
            model = trained_model(cfg, run_dir)
            rows.setdefault(name, []).append(row | {"peak_mib": peak_memory_mib(model, batch)})
            if seed == args.seeds[0] and args.out and base.data.dataset != "points":
                figures(model, splits.test[:2000], args.out, name)
    m, t = base.model, base.train
    curvature = replace(m, **MODELS["NFDM-OT"], curvature_weight=args.curvature_weight).curvature
    lines = [
        f"# {args.dataset}: {', '.join(args.models)}, {args.steps} steps each, seeds {args.seeds}",
        "",
        f"Every model: MLP {m.hidden}x{m.depth} for x_theta (and for F_phi, or NFDM's mean "
        f"and scale), batch {t.batch_size}, lr {t.lr}, EMA {t.ema_decay}. "
        f"{models_text(args.models, m, curvature)}Test set: {args.n_eval} points; mean ± "
        f"standard error over seeds. {environment()}.",
        "",
        *tables(rows, args.nfe, args.dataset),
    ]
    entropy = rows[next(iter(rows))][0]["entropy"]
    if entropy is not None:
        below = [f"{name} {key}" for name, runs in rows.items() for key in ("nll", "nelbo")
                 if statistics.mean(r[key] for r in runs) < entropy]  # fmt: skip
        lines += ["", "Below the entropy (a bug, or the Monte Carlo error of a tight bound): "
                  + (", ".join(below) if below else "none") + "."]  # fmt: skip
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
