"""Ablations of the learned transform ``F_phi``: its form, its initialisation, its learning
rate, the frequencies of its time embedding, how its gradient is clipped and the training
length, against DDPM, on the checkerboard and the built-in digits, in discrete time
(``T = 10``, time embedded at ``1000 t`` unless a variant says otherwise) and in continuous
time.

Every variant is trained with each of ``--seeds`` seeds on the same data and budget. Per row:

* the NELBO on the test set (discrete: the sum of all ``T`` terms; continuous: 64 time
  draws per example; the same noise for every model), nats for points, bits/dim for the
  digits (uniformly dequantised, + log2(L / 2)), mean ± standard error over seeds;
* its difference to DDPM of the same seed and budget (negative: NDM is better);
* what ``F`` does (:mod:`ndm.analysis.diagnostics`): the displacement ``E||F(x, t) - x||^2 /
  E||x||^2`` at ``t = 0.25, 0.5, 0.75, 1`` and the NELBO gap when ``F`` is replaced by the
  identity at evaluation (positive: the predictor relies on ``F``);
* the median over training of ``grad_norm_phi / grad_norm_theta`` (the gradient's share
  that reaches ``F``), the signal-to-noise ratio of the trained model's gradient over
  ``phi`` and over ``theta`` (:func:`ndm.analysis.diagnostics.gradient_signal_to_noise`). Step
  times are measured apart, by ``benchmarks.step_time``.

"Longer" runs continue copies of the default NDM and DDPM runs to twice the steps (the
learning rate is constant after warm-up, so only the order of random draws differs from
training that long at once). Each run and each row is
kept in ``--runs-dir`` and reused by a rerun. The controlled case with a known answer is
``benchmarks/mixture_1d.py``. Usage::

    python -m benchmarks.transform_study --out benchmarks/results/transform_study.md
    python -m benchmarks.transform_study --datasets digits --image-regimes continuous \
        --variants ddpm ndm interpolation random-init phi-lr clip-apart --no-figures \
        --out benchmarks/results/transform_study_digits_continuous.md
    python -m benchmarks.transform_study --steps 2000 --image-steps 2000 --image-regimes \
        'T = 10' continuous --runs-dir runs/transform-study-long   # with more time
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from benchmarks.harness import cached_row, environment, mean_and_stderr, report, trained_model
from ndm.analysis.diagnostics import (
    gradient_signal_to_noise,
    identity_transform_gap,
    transform_displacement,
)
from ndm.data.images import dequantise
from ndm.data.loading import Splits, model_input
from ndm.evaluation.evaluate import evaluate
from ndm.models.ndm import NDM
from ndm.plots.images import plot_image_transform, plot_predictions_from_noise
from ndm.plots.points import plot_transform
from ndm.runs.config import RunConfig, config_from_dict
from ndm.runs.folder import METRICS, load_run, read_metrics
from ndm.runs.inputs import load_data

ROOT = Path(__file__).resolve().parents[1]
TIMES = (0.25, 0.5, 0.75, 1.0)
#: discrete time as this study first measured it, with both networks' time embeddings at
#: ``1000 t`` (the default then; the ``step-index`` variants have today's, ``T t``)
REGIMES = {
    "T = 10": {"objective": "discrete", "num_steps": 10, "time_scale": 1000.0},
    "continuous": {"objective": "continuous"},
}
#: name: (label, model overrides)
VARIANTS = {
    "ddpm": ("DDPM (F = x)", {"transform": "identity"}),
    "ndm": ("NDM, F = x + t NN, NN's output zero at init (default)", {}),
    "interpolation": (
        "NDM, F = (1 - t) x + t NN",
        {"transform_form": "interpolation"},
    ),
    "random-init": (
        "NDM, NN's output at PyTorch's init",
        {"transform_init_scale": 1.0},
    ),
    "phi-lr": ("NDM, lr of phi x 3", {}),
    "slow-time": (
        "NDM, F's time embedding at 10 t, not 1000 t",
        {"transform_time_scale": 10.0},
    ),
    "clip-apart": ("NDM, gradients of phi and theta clipped apart", {}),
    "ddpm-step-index": (
        "DDPM (F = x), time embedded as the step index T t",
        {"transform": "identity", "time_scale": 0.0},
    ),
    "step-index": (
        "NDM, both networks' time embedded as the step index T t",
        {"time_scale": 0.0},
    ),
}
#: name: train overrides given the base train section, of the variants that have any
TRAIN_OVERRIDES = {
    "phi-lr": lambda train: {"transform_lr": 3 * train.lr},
    "clip-apart": lambda train: {"grad_clip_scope": "apart"},
}
#: variants that differ from another only in discrete time
DISCRETE_ONLY = ("ddpm-step-index", "step-index")
LONGER = ("ddpm", "ndm")
SNR_BATCHES = 32


def base_config(dataset: str, steps: int) -> RunConfig:
    """The checkerboard with the command line's defaults but batches of 256, or the digits
    of ``configs/digits-discrete.json`` with batches of 32 (the budget of 2 CPU cores);
    ``steps`` steps, 100 of warm-up."""
    if dataset == "digits":
        cfg = config_from_dict(json.loads((ROOT / "configs" / "digits-discrete.json").read_text()))
        cfg = replace(cfg, eval=replace(cfg.eval, n_eval=200))
        batch_size = 32
    else:
        cfg = RunConfig()
        cfg = replace(cfg, data=replace(cfg.data, dataset=dataset))
        cfg = replace(cfg, eval=replace(cfg.eval, n_eval=2000))
        batch_size = 256
    train = replace(cfg.train, steps=steps, batch_size=batch_size, warmup_steps=100,
                    checkpoint_every=steps, log_every=50)  # fmt: skip
    return replace(cfg, train=train)


def variant_config(base: RunConfig, regime: str, variant: str, seed: int) -> RunConfig:
    _, model = VARIANTS[variant]
    train = TRAIN_OVERRIDES.get(variant, lambda train: {})(base.train)
    return replace(
        base,
        model=replace(base.model, **(REGIMES[regime] | model)),
        train=replace(base.train, seed=seed, **train),
    )


def measure(model: NDM, cfg: RunConfig, splits: Splits, run_dir: Path) -> dict:
    """The row of one run: NELBO, the transform's diagnostics and training statistics."""
    metrics = evaluate(model, splits, cfg.eval, with_nll=False)
    per_nats = 1.0
    test = splits.test[: cfg.eval.n_eval]
    if splits.is_image:
        per_nats = 1.0 / (math.prod(splits.shape) * math.log(2))
        test = dequantise(test, splits.num_levels, torch.Generator().manual_seed(1))
    row = {"nelbo": metrics["nelbo_bpd" if splits.is_image else "nelbo"]}
    if cfg.model.transform == "learned":
        lines = read_metrics(run_dir / METRICS)
        row["moved"] = transform_displacement(model, test, torch.tensor(TIMES)).tolist()
        gap = identity_transform_gap(model, test, num_time_samples=cfg.eval.nelbo_time_samples)
        row["identity_gap"] = gap["gap"] * per_nats
        row["grad_ratio"] = statistics.median(
            line["grad_norm_phi"] / line["grad_norm_theta"] for line in lines
        )
    return row


def run_row(base: RunConfig, splits: Splits, runs_dir: Path, name: str, seed: int,
            longer: bool) -> dict:  # fmt: skip
    """Train (or load) one run and measure it; a longer run continues a copy of the run."""
    regime, variant = name.split("/")
    cfg = variant_config(base, regime, variant, seed)
    folder = f"{regime.replace(' = ', '')}-{variant}-seed{seed}"
    run_dir = runs_dir / folder
    if longer:
        cfg = replace(cfg, train=replace(cfg.train, steps=2 * cfg.train.steps))
        shorter, run_dir = run_dir, runs_dir / f"{folder}-x2"
        if not run_dir.exists():
            trained_model(variant_config(base, regime, variant, seed), shorter)
            shutil.copytree(shorter, run_dir, ignore=shutil.ignore_patterns("benchmark_rows*"))
    model = trained_model(cfg, run_dir).eval()
    key = f"steps={cfg.train.steps},n_eval={cfg.eval.n_eval}"
    row = cached_row(run_dir, key, partial(measure, model, cfg, splits, run_dir))
    snr_key = f"steps={cfg.train.steps},snr_batches={SNR_BATCHES}"
    return row | cached_row(run_dir, snr_key, partial(gradient_snr, model, cfg, splits))


def gradient_snr(model: NDM, cfg: RunConfig, splits: Splits) -> dict:
    """:func:`ndm.analysis.diagnostics.gradient_signal_to_noise` of the trained model on
    ``SNR_BATCHES`` training minibatches of the run's size, as training draws them."""
    generator = torch.Generator().manual_seed(2)
    index = torch.randperm(splits.train.shape[0], generator=generator)
    batches = [
        model_input(splits.train[part], splits, generator, augment=True)
        for part in index[: SNR_BATCHES * cfg.train.batch_size].split(cfg.train.batch_size)
    ]
    return gradient_signal_to_noise(model, batches)


def table_row(dataset: str, regime: str, label: str, rows: list[dict], ddpm: list[dict]) -> str:
    nelbo = [row["nelbo"] for row in rows]
    versus = [row["nelbo"] - reference["nelbo"] for row, reference in zip(rows, ddpm, strict=True)]
    paired = "" if rows is ddpm else mean_and_stderr(versus)
    cells = [dataset, regime, label, mean_and_stderr(nelbo), paired]
    if "moved" in rows[0]:
        moved = [statistics.mean(row["moved"][k] for row in rows) for k in range(len(TIMES))]
        cells += [
            " / ".join(f"{value:.2g}" for value in moved),
            mean_and_stderr([row["identity_gap"] for row in rows]),
            f"{statistics.mean(row['grad_ratio'] for row in rows):.2f}",
            f"{statistics.mean(row['snr_phi'] for row in rows):.2f}",
        ]
    else:
        cells += ["", "", "", ""]
    cells.append(f"{statistics.mean(row['snr_theta'] for row in rows):.2f}")
    return "| " + " | ".join(cells) + " |"


def write_figures(base: dict[str, RunConfig], runs_dir: Path, out_dir: Path) -> None:
    """The paper's Figure 2 from the longer NDM runs of seed 0: ``F(x, t)`` of checkerboard
    points coloured by their square (2a, continuous time) and of digits (2b-c, ``T = 10``),
    and ``x_theta(z_1, 1)`` of NDM above DDPM (2d-e), from runs that predict ``x`` (a model
    that predicts the noise shows noise there): ``T = 10``, seed 0, twice the steps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if "checkerboard" in base:
        ndm = load_run(runs_dir / "checkerboard" / "continuous-ndm-seed0-x2")[1].eval()
        test = load_data(base["checkerboard"].data).test[:4000]
        plot_transform(ndm, test, out_dir / "transform_study_checkerboard.png")
    if "digits" in base:
        splits = load_data(base["digits"].data)
        test = model_input(splits.test[:6], splits, None, augment=False)
        ndm = load_run(runs_dir / "digits" / "T10-ndm-seed0-x2")[1].eval()
        plot_image_transform(ndm, test, out_dir / "transform_study_digits.png")
        predicting_x = {}
        for label, variant in (("NDM", "ndm"), ("DDPM", "ddpm")):
            cfg = variant_config(base["digits"], "T = 10", variant, seed=0)
            cfg = replace(cfg, model=replace(cfg.model, parameterisation="x"),
                          train=replace(cfg.train, steps=2 * cfg.train.steps))  # fmt: skip
            run_dir = runs_dir / "digits" / f"T10-{variant}-x-parameterised"
            predicting_x[label] = trained_model(cfg, run_dir).eval()
        plot_predictions_from_noise(
            predicting_x, splits.shape, out_dir / "transform_study_predictions.png"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=["checkerboard", "digits"],
                        default=["checkerboard", "digits"])  # fmt: skip
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument(
        "--image-regimes",
        nargs="+",
        choices=list(REGIMES),
        default=["T = 10"],
        help="regimes of the digits (continuous time: the jvp through the U-Net makes an NDM "
        "step 9 times DDPM's, and the ablation 1.5 h on one CPU thread)",
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--longer", nargs="*", choices=LONGER, default=list(LONGER),
                        help="variants also trained twice as long")  # fmt: skip
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="Figure 2 a-e beside the table")  # fmt: skip
    parser.add_argument("--steps", type=int, default=400, help="training steps of a run")
    parser.add_argument("--image-steps", type=int, default=300, help="the same for the digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "transform-study")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    began = time.perf_counter()
    lines = [
        f"# The learned transform, ablated: {args.seeds} seeds, {args.steps} steps on the "
        f"checkerboard and {args.image_steps} on the digits (longer: twice as many)",
        "",
        "NELBO in nats (checkerboard, batch 256; entropy 3.466) or bits/dim (digits, 17 "
        "levels, batch 32), mean ± standard error over seeds; − DDPM: the paired difference "
        "to DDPM of the same seed and steps; F moved: E||F(x,t) - x||^2 / E||x||^2 at t = "
        f"{', '.join(map(str, TIMES))}; F = x: the NELBO with F replaced by the identity at "
        "evaluation minus the model's; |∇φ|/|∇θ|: the median over training of the gradient "
        f"norms' ratio; SNR: ||E g|| / sqrt(E||g - E g||^2) of the trained model's loss "
        f"gradient over φ and θ, from {SNR_BATCHES} training minibatches (below 1: a step is "
        f"mostly noise). Step times: benchmarks.step_time. {environment()}"
        f".",
        "",
        "| data | regime | variant | NELBO | − DDPM | F moved | NELBO(F = x) − NELBO | "
        "|∇φ|/|∇θ| | SNR φ | SNR θ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    bases = {
        dataset: base_config(dataset, args.image_steps if dataset == "digits" else args.steps)
        for dataset in args.datasets
    }
    for dataset, base in bases.items():
        splits = load_data(base.data)
        runs_dir = args.runs_dir / dataset
        for regime in args.image_regimes if dataset == "digits" else args.regimes:
            variants = ["ddpm", *(v for v in args.variants if v != "ddpm")]  # ddpm: the reference
            if REGIMES[regime]["objective"] == "continuous":
                variants = [v for v in variants if v not in DISCRETE_ONLY]
            named = [(v, VARIANTS[v][0], False) for v in variants]
            named += [(v, f"{VARIANTS[v][0].split(',')[0]}, longer", True)
                      for v in args.longer if v in variants]  # fmt: skip
            measured = {}
            for variant, label, longer in named:
                rows = [
                    run_row(base, splits, runs_dir, f"{regime}/{variant}", seed, longer)
                    for seed in range(args.seeds)
                ]
                measured[variant, longer] = rows
                lines.append(table_row(dataset, regime, label, rows, measured["ddpm", longer]))
                report("\n".join(lines), args.out)  # the table so far, after every row
    if args.out is not None and args.figures and "ndm" in args.variants:
        write_figures(bases, args.runs_dir, args.out.parent)
    seconds = time.perf_counter() - began
    note = f"This invocation: {seconds:.0f} s (rows measured before are read from the runs)."
    report("\n".join([*lines, "", note]), args.out)


if __name__ == "__main__":
    main()
