"""The shape of the paper's Table 4 on Fashion-MNIST: NDM against DDPM in discrete time.

NDM (learned transform) and the DDPM baseline (identity transform; same objective, network
and hyper-parameters) are trained with ``T = 10`` and ``T = 1000`` steps. Each row reports
the test NLL along the probability-flow ODE (Hutchinson, dopri5), the discrete NELBO and FID
(features of a small classifier trained on the training split, its test accuracy printed)
with ancestral (FID) and DDIM (FID*) sampling on the training grid; the ``T = 1000`` models
are also evaluated with 10 steps (NELBO of the 10-step model, samples on 10 steps). All in
bits/dim of the 8-bit data. Usage::

    python -m benchmarks.fashion_mnist --preset cpu --out benchmarks/results/fashion_mnist.md
    python -m benchmarks.fashion_mnist --preset gpu --path /data/fashion-mnist   # on a GPU
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from benchmarks.harness import cached_row, environment, report, trained_model, training_seconds
from ndm.analysis.diagnostics import identity_transform_gap, transform_displacement
from ndm.data.images import dequantise
from ndm.data.loading import Splits, model_input
from ndm.evaluation.evaluate import (
    evaluate,
    fid_features,
    paired_difference,
    sample_images,
    sample_quality,
)
from ndm.losses.likelihood import bits_per_dim
from ndm.models.ndm import NDM
from ndm.plots.images import plot_image_samples, plot_image_transform, plot_predictions_from_noise
from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from ndm.runs.folder import load_run
from ndm.runs.inputs import load_data

DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"
TIMES = (0.25, 0.5, 0.75, 1.0)  # of the displacement of a learned F
PRESETS = {
    "cpu": {"resolution": 16, "architecture": "cpu16", "batch_size": 64, "steps": 1200},
    "gpu": {"resolution": 28, "architecture": "cpu28", "batch_size": 128, "steps": 100_000},
}


# settings besides the defaults, by config section
PAPER = {"model": {"schedule": "linear", "reverse_variance": "posterior"}}  # the paper's bound
LEARNED_ENDS = {"model": {"schedule_endpoints": "learned"}}
CLIPPED_APART = {"train": {"grad_clip_scope": "apart"}}
# phi frozen at F = x (its output layer starts at zero; a learning rate of 0 keeps it there),
# while its gradient still enters the one clip: what training beside phi does without F
FROZEN_PHI = {"train": {"transform_lr": 0.0}}
# name -> (label, transform, suffix of the run folder, settings)
MODELS = {
    "ddpm": ("DDPM", "identity", "", {}),
    "ndm": ("NDM", "learned", "", {}),
    "paper": ("DDPM, paper's bound", "identity", "-paper", PAPER),
    "ddpm-ends": ("DDPM, learned end points", "identity", "-ends", LEARNED_ENDS),
    "ndm-ends": ("NDM, learned end points", "learned", "-ends", LEARNED_ENDS),
    "ndm-clip": ("NDM, phi and theta clipped apart", "learned", "-clip-apart", CLIPPED_APART),
    "ndm-frozen": ("NDM, phi frozen at F = x", "learned", "-frozen-phi", FROZEN_PHI),
    "ndm-half": ("NDM, F at 1/2 width", "learned", "-f-half", {"model": {"transform_width": 0.5}}),
    "ndm-quarter": (
        "NDM, F at 1/4 width",
        "learned",
        "-f-quarter",
        {"model": {"transform_width": 0.25}},
    ),
    "ndm-eighth": (
        "NDM, F at 1/8 width",
        "learned",
        "-f-eighth",
        {"model": {"transform_width": 0.125}},
    ),
}
#: the model each is compared with on the same images and noise (the "paired" columns)
REFERENCE = {"ndm": "ddpm", "paper": "ddpm", "ddpm-ends": "ddpm", "ndm-ends": "ddpm-ends",
             "ndm-clip": "ddpm", "ndm-frozen": "ddpm", "ndm-half": "ddpm",
             "ndm-quarter": "ddpm", "ndm-eighth": "ddpm"}  # fmt: skip
ROWS = ("ddpm:10", "ndm:10", "ddpm:1000", "ndm:1000", "paper:1000", "ddpm-ends:10",
        "ndm-ends:10", "ndm-clip:10", "ndm-clip:1000", "ndm-frozen:1000", "ndm-half:10",
        "ndm-quarter:10", "ndm-eighth:10")  # fmt: skip


def _config(
    args: argparse.Namespace, transform: str, num_steps: int, settings: dict | None = None
) -> RunConfig:
    settings = settings or {}
    preset = PRESETS[args.preset]
    return RunConfig(
        DataConfig(dataset="fashion_mnist", path=args.path, resolution=preset["resolution"]),
        ModelConfig(
            transform=transform,
            architecture=preset["architecture"],
            objective="discrete",
            num_steps=num_steps,
            **settings.get("model", {}),
        ),
        TrainConfig(
            steps=preset["steps"] if args.steps is None else args.steps,
            batch_size=preset["batch_size"],
            lr=2e-4 if args.preset == "gpu" else 1e-3,
            warmup_steps=200,
            ema_decay=0.999 if args.preset == "gpu" else 0.995,
            checkpoint_every=1000,
            log_every=50,
            device="auto",
            precision="bf16" if args.preset == "gpu" else "fp32",
            seed=args.seed,
            **settings.get("train", {}),
        ),
        EvalConfig(
            n_eval=args.n_eval,
            rtol=1e-3,
            atol=1e-3,
            nelbo_terms=None,
            nll_max_steps=args.nll_max_steps,
            fid_samples=args.fid_samples,
            classifier_steps=args.classifier_steps,
        ),
    )


def _row(
    model: NDM, cfg: RunConfig, splits: Splits, features, steps: int, nll: dict | None = None
) -> dict:
    """NLL (taken from ``nll``, the row of the training grid, when given: the ODE does not
    depend on the grid), NELBO on a ``steps``-step grid, both also per test image, and FID /
    FID* with ``steps`` sampler steps; ``seconds``: how long it took."""
    began = time.perf_counter()
    likelihood_model = model if steps == model.num_steps else model.with_num_steps(steps)
    eval_cfg = cfg.eval
    row = evaluate(likelihood_model, splits, eval_cfg, with_nll=nll is None, per_example=True)
    if nll is not None:
        row |= {key: value for key, value in nll.items() if key.startswith("nll")}
        row["per_example_bpd"]["nll"] = nll["per_example_bpd"]["nll"]
    for key, sampler in (("fid", "ddpm"), ("fid_ddim", "ddim")):
        quality = sample_quality(
            model, splits, replace(eval_cfg, fid_sampler=sampler), features, steps
        )
        row[key] = quality["fid"]
    return row | {"seconds": time.perf_counter() - began}


def _what_f_does(model: NDM, splits: Splits, n_eval: int) -> dict:
    """What the learned ``F`` does to the first ``n_eval`` dequantised test images
    (:mod:`ndm.analysis.diagnostics`): ``moved``, its displacement ``E||F(x, t) - x||^2 / E||x||^2``
    at ``TIMES``, and ``identity_gap`` (± ``identity_gap_stderr``), the NELBO on the
    training grid with ``F = x`` at evaluation minus the model's, bits/dim, paired by image."""
    x = dequantise(splits.test[:n_eval], splits.num_levels, torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = identity_transform_gap(model, x)
        moved = transform_displacement(model, x, torch.tensor(TIMES)).tolist()

    def bpd(nats: float) -> float:  # a difference: no dequantisation offset
        return float(bits_per_dim(torch.tensor(nats), math.prod(splits.shape)))

    return {
        "moved": moved,
        "identity_gap": bpd(gap["gap"]),
        "identity_gap_stderr": bpd(gap["gap_stderr"]),
    }


def write_figures(runs_dir: Path, splits: Splits, out_dir: Path) -> None:
    """Figures of the ``T = 1000`` runs: ``F_phi(x, t)`` of test images (paper, Fig. 2b-c),
    ``x_theta(z_1, 1)`` of NDM above DDPM (Fig. 2d-e) and 10-step DDIM samples of each."""
    models = {label: load_run(runs_dir / f"{name}-T1000")[1].eval() for label, name in
              (("NDM", "learned"), ("DDPM", "identity"))}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    test = model_input(splits.test[:32], splits, None, augment=False)
    plot_image_transform(models["NDM"], test[:6], out_dir / "fashion_mnist_transform.png")
    plot_predictions_from_noise(models, splits.shape, out_dir / "fashion_mnist_predictions.png")
    for label, model in models.items():
        generator = torch.Generator().manual_seed(0)
        samples, _ = sample_images(model, splits, 32, "ddim", 10, generator)
        plot_image_samples(samples, test, out_dir / f"fashion_mnist_{label}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--path", default=DEBIAN_PATH, help="folder of the IDX files")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the preset's)"
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (of initialisation, minibatches and noise)")  # fmt: skip
    parser.add_argument("--n-eval", type=int, default=50, help="test images for NLL/NELBO")
    parser.add_argument("--fid-samples", type=int, default=100)
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--nll-max-steps", type=int, default=300,
                        help="dopri5 steps per NLL solve before the NLL is left out")  # fmt: skip
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "fashion-mnist")
    parser.add_argument(
        "--rows", nargs="+", choices=ROWS, default=list(ROWS), help="model:T rows to measure"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    began = time.perf_counter()
    cfg0 = _config(args, "identity", 10)
    splits = load_data(cfg0.data)
    features, info = fid_features(splits, cfg0.eval)
    rows = []
    for row in args.rows:
        name, num_steps = row.split(":")[0], int(row.split(":")[1])
        _, transform, suffix, run_settings = MODELS[name]
        cfg = _config(args, transform, num_steps, run_settings)
        run_dir = args.runs_dir / f"{transform}{suffix}-T{num_steps}"
        model = trained_model(cfg, run_dir).eval()
        settings = (
            f"n_eval={args.n_eval},fid_samples={args.fid_samples},"
            f"classifier_steps={args.classifier_steps},nll_max_steps={args.nll_max_steps},"
            "per_example"
        )
        measure = partial(_row, model, cfg, splits, features)
        own = cached_row(run_dir, f"T={num_steps},{settings}", partial(measure, num_steps))
        if transform == "learned":
            key = f"transform,n_eval={args.n_eval}"
            own = own | cached_row(run_dir, key, partial(_what_f_does, model, splits, args.n_eval))
        rows.append((str(num_steps), name, own | {"train_seconds": training_seconds(run_dir)}))
        if num_steps == 1000:
            coarse = cached_row(run_dir, f"T=10,{settings}", partial(measure, 10, own))
            rows.append(("1000 → 10", name, coarse))
        # the table so far, rewritten after every model
        report(_table(args, rows, info, time.perf_counter() - began), args.out)
    trained_1000 = all((args.runs_dir / f"{t}-T1000" / "checkpoint.pt").exists()
                       for t in ("learned", "identity"))  # fmt: skip
    if args.out is not None and trained_1000 and "ndm:1000" in args.rows:
        write_figures(args.runs_dir, splits, args.out.parent)


def _table(args: argparse.Namespace, rows: list, info: dict, seconds: float) -> str:
    preset = PRESETS[args.preset]
    lines = [
        f"# Fashion-MNIST {preset['resolution']}x{preset['resolution']}: NDM vs DDPM "
        "(discrete time, bits/dim)",
        "",
        f"Preset {args.preset}: U-Net {preset['architecture']} for x_theta and F_phi, "
        f"{preset['steps'] if args.steps is None else args.steps} steps of batch {preset['batch_size']} (training seed "
        f"{args.seed}), trained on "
        "uniformly dequantised images, time embedded as the step index T t; log-SNR-linear "
        "schedule and learned reverse variance "
        "(the paper's bound: linear VP schedule, posterior variance; learned end points: "
        "gamma_0 and gamma_1 of that schedule trained with the model). NLL/NELBO on "
        f"{args.n_eval} dequantised test images, + log2(128) = 7 bits/dim (NLL: Hutchinson, 1 "
        f"probe, dopri5 rtol=atol=1e-3 with at most {args.nll_max_steps} steps for the "
        f"{args.n_eval} images; NELBO: the sum of all T terms, its prior, diffusion and "
        "reconstruction terms; ± one standard error over images); paired: NLL and NELBO minus "
        "those of the model named on the same images and noise, ± the standard error of "
        "the per-image differences (negative: better); FID from "
        f"{args.fid_samples} samples against as many test images, features of a classifier "
        f"with test accuracy {info.get('classifier_test_accuracy', float('nan')):.3f}. "
        f"{environment()}; "
        f"training and evaluation of these rows took {_total_seconds(rows):.0f} s in all (the "
        "train s and eval s columns; the 1000 → 10 rows reuse the T = 1000 runs); this "
        f"invocation took {seconds:.0f} s.",
        "",
        "| steps | model | NLL ↓ | NELBO ↓ | prior | diffusion | reconstruction | FID ↓ "
        "| FID* (DDIM) ↓ | paired: NLL, NELBO − | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = ("10", "1000", "1000 → 10")
    by_key = {(steps, name): r for steps, name, r in rows}
    for steps, name, r in sorted(rows, key=lambda row: order.index(row[0])):
        nll = (
            f"{r['nll_bpd']:.3f} ± {r['nll_bpd_stderr']:.3f}"
            if "nll_bpd" in r
            else f"stiff: > {args.nll_max_steps} steps"
        )
        lines.append(
            f"| {steps} | {MODELS[name][0]} | {nll} | "
            f"{r['nelbo_bpd']:.3f} ± {r['nelbo_bpd_stderr']:.3f} | "
            f"{r['nelbo_prior_bpd']:.3f} | {r['nelbo_diffusion_bpd']:.3f} | "
            f"{r['nelbo_reconstruction_bpd']:.3f} | {r['fid']:.2f} | {r['fid_ddim']:.2f} | "
            f"{_paired(r, by_key.get((steps, REFERENCE.get(name))), REFERENCE.get(name))} | "
            f"{_seconds(r.get('train_seconds'))} | {_seconds(r.get('seconds'))} |"
        )
    learned = [(steps, name, r) for steps, name, r in rows if "moved" in r]
    if learned:
        lines += [
            "",
            f"What the learned F does, on the same {args.n_eval} dequantised test images: "
            "F moved = E||F(x,t) - x||^2 / E||x||^2 at t = "
            f"{', '.join(map(str, TIMES))}; F = x: the NELBO with F replaced by the identity at "
            "evaluation minus the model's, bits/dim, ± the standard error of the per-image "
            "differences (positive: the predictor relies on F).",
            "",
            "| steps | model | F moved | NELBO(F = x) − NELBO |",
            "|---|---|---|---|",
        ]
        for steps, name, r in learned:
            moved = " / ".join(f"{m:.2g}" for m in r["moved"])
            lines.append(
                f"| {steps} | {MODELS[name][0]} | {moved} | "
                f"{r['identity_gap']:.3f} ± {r['identity_gap_stderr']:.3f} |"
            )
    return "\n".join(lines)


def _paired(row: dict, reference: dict | None, name: str | None) -> str:
    """``row``'s NLL and NELBO minus ``reference``'s, paired by image (empty without one)."""
    if reference is None:
        return ""
    parts = []
    for key in ("nll", "nelbo"):
        values, others = row["per_example_bpd"], reference["per_example_bpd"]
        if key in values and key in others:
            mean, stderr = paired_difference(values[key], others[key])
            parts.append(f"{mean:+.3f} ± {stderr:.3f}")
        else:
            parts.append("—")
    return f"{', '.join(parts)} ({MODELS[name][0]})"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _total_seconds(rows: list) -> float:
    return sum(r.get("train_seconds", 0.0) + r.get("seconds", 0.0) for _, _, r in rows)


if __name__ == "__main__":
    main()
