"""NFDM and NFDM-OT against NDM, DDPM and flow matching on Fashion-MNIST in continuous
time, paired by image.

The models share the CPU preset of :mod:`benchmarks.fashion_mnist` (16x16 images, U-Net
``cpu16``, batch 64, its steps, learning rate and EMA) and the seed; NDM's ``F`` and the
NFDMs' mean-scale networks are U-Nets of the predictor's size. DDPM, NDM and NFDM train
the continuous NELBO; flow matching (FM) and NFDM-OT the velocity objective on the
settings of :data:`benchmarks.nfdm_toy.FLOW`.
Each row reports, in bits/dim of the 8-bit data, the test NLL along the probability-flow
ODE (Hutchinson, dopri5) and the continuous NELBO, each also minus DDPM's and NDM's on
the same images and noise (negative: better), the training step's time, and the offline
FID (features of a small classifier trained on the training split) of DDIM samples at
1, 2, 4, 8 and 16 steps and of adaptive (dopri5) probability-flow ODE samples.
Usage::

    python -m benchmarks.nfdm_fashion_mnist --models DDPM NDM NFDM FM NFDM-OT \
        --out benchmarks/results/nfdm_fashion_mnist.md
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from benchmarks.fashion_mnist import DEBIAN_PATH, PRESETS
from benchmarks.harness import cached_row, environment, markdown_table, report, trained_model
from benchmarks.nfdm_toy import MODELS, models_text
from ndm.data.loading import Splits, model_input
from ndm.evaluation.evaluate import evaluate, fid_features, paired_difference, sample_quality
from ndm.evaluation.fid import frechet_distance
from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from ndm.runs.folder import METRICS, read_metrics
from ndm.runs.inputs import load_data


def config(args: argparse.Namespace, settings: dict) -> RunConfig:
    """The CPU preset of the discrete-time benchmark, in continuous time, with the model
    ``settings`` of one of :data:`benchmarks.nfdm_toy.MODELS`."""
    preset = PRESETS["cpu"]
    return RunConfig(
        DataConfig(dataset="fashion_mnist", path=args.path, resolution=preset["resolution"]),
        ModelConfig(architecture=preset["architecture"], **settings),
        TrainConfig(
            steps=preset["steps"] if args.steps is None else args.steps,
            batch_size=preset["batch_size"],
            lr=1e-3,
            warmup_steps=200,
            ema_decay=0.995,
            checkpoint_every=200,
            log_every=50,
            seed=args.seed,
        ),
        EvalConfig(
            n_eval=args.n_eval,
            rtol=1e-3,
            atol=1e-3,
            nll_max_steps=args.nll_max_steps,
            fid_samples=args.fid_samples,
            classifier_steps=args.classifier_steps,
        ),
    )


#: DDIM step counts of the few-step table (one network call each)
DDIM_STEPS = (1, 2, 4, 8, 16)


def measure(cfg: RunConfig, run_dir: Path, splits: Splits, features) -> dict:
    """Likelihoods per image and FIDs of one model on ``splits`` (trained here if its run
    has not finished): ``fid``, ``[sampler, NFE, FID]`` for each of DDIM's step counts and the
    adaptive ODE; ``step_seconds``: the median time of a training step."""
    model = trained_model(cfg, run_dir).eval()
    row = evaluate(model, splits, cfg.eval, per_example=True)
    fids = []
    for sampler, steps in [("ddim", n) for n in DDIM_STEPS] + [("ode", 1)]:
        quality = sample_quality(
            model, splits, replace(cfg.eval, fid_sampler=sampler), features, steps
        )
        fids.append([sampler, quality["fid_nfe"], quality["fid"]])
    steps = [line["seconds_per_step"] for line in read_metrics(run_dir / METRICS)]
    return row | {"fid": fids, "step_seconds": sorted(steps)[len(steps) // 2]}


def held_out_fid(splits: Splits, size: int, features) -> float:
    """FID of the next ``size`` test images against the first ``size``, which every model's
    samples are scored against: what a sampler of the data itself scores at this size."""
    real, other = (
        model_input(splits.test[i * size : (i + 1) * size], splits, None, augment=False)
        for i in (0, 1)
    )
    return frechet_distance(real, other, features)


def paired(row: dict, reference: dict | None) -> str:
    """``row``'s NLL and NELBO minus ``reference``'s on the same images and noise, each
    ± the standard error of the per-image differences; empty against itself or nothing."""
    if reference is None or row is reference:
        return ""
    cells = []
    for key in ("nll", "nelbo"):
        mean, stderr = paired_difference(
            row["per_example_bpd"][key], reference["per_example_bpd"][key]
        )
        cells.append(f"{mean:+.3f} ± {stderr:.3f}")
    return ", ".join(cells)


def fid_rows(rows: list[dict]) -> list[list]:
    """One line per sampler setting: its name, its NFE and each model's FID."""
    lines = []
    for i, (sampler, nfe, _) in enumerate(rows[0]["fid"]):
        if sampler == "ode":
            cells = [f"{row['fid'][i][2]:.2f} ({row['fid'][i][1]:.0f})" for row in rows]
            lines.append(["ODE, dopri5", "adaptive", *cells])
        else:
            lines.append(
                [sampler.upper(), f"{nfe:.0f}", *(f"{row['fid'][i][2]:.2f}" for row in rows)]
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=DEBIAN_PATH, help="folder of the IDX files")
    parser.add_argument("--steps", type=int, default=None, help="training steps (preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=50, help="test images for NLL/NELBO")
    parser.add_argument("--fid-samples", type=int, default=100)
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--nll-max-steps", type=int, default=300)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "nfdm-fashion-mnist")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    first = config(args, MODELS["DDPM"])
    splits = load_data(first.data)
    features, described = fid_features(splits, first.eval)
    rows = {}
    for label in args.models:
        cfg = config(args, MODELS[label])
        run_dir = args.runs_dir / f"{label.lower()}-seed{args.seed}"
        key = f"{cfg.train.steps} steps, n_eval {args.n_eval}, fid {args.fid_samples} by NFE"
        rows[label] = cached_row(
            run_dir, key, lambda c=cfg, r=run_dir: measure(c, r, splits, features)
        )
    header = ["model", "NLL (bits/dim)", "NELBO (bits/dim)", "NLL, NELBO − DDPM's (paired)",
              "NLL, NELBO − NDM's (paired)", "s / step", "step time / DDPM's"]  # fmt: skip
    body = []
    for label, row in rows.items():
        ratio = (
            f"{row['step_seconds'] / rows['DDPM']['step_seconds']:.2f}" if "DDPM" in rows else ""
        )
        body.append([
            label,
            f"{row['nll_bpd']:.3f} ± {row['nll_bpd_stderr']:.3f}",
            f"{row['nelbo_bpd']:.3f} ± {row['nelbo_bpd_stderr']:.3f}",
            paired(row, rows.get("DDPM")), paired(row, rows.get("NDM")),
            f"{row['step_seconds']:.3f}", ratio,
        ])  # fmt: skip
    t = first.train
    curvature = config(args, MODELS["NFDM-OT"]).model.curvature
    lines = [
        f"# Fashion-MNIST 16x16, continuous time: {', '.join(rows)}, {t.steps} steps each",
        "",
        f"U-Net {first.model.architecture} for x_theta (and for F_phi, or NFDM's mean and "
        f"scale), batch {t.batch_size}, lr {t.lr}, EMA {t.ema_decay}, seed {args.seed}. "
        f"{models_text(list(rows), first.model, curvature)}"
        f"{args.n_eval} dequantised test images, the same images and noise for every model. "
        f"FID features: {described['fid_features']}"
        + (
            f" (test accuracy {described['classifier_test_accuracy']:.3f})"
            if "classifier_test_accuracy" in described
            else ""
        )  # fmt: skip
        + f". {environment()}.",
        "",
        *markdown_table(header, body),
        "",
        f"FID of {args.fid_samples} samples against as many test images, by sampler and "
        "number of network evaluations (NFE; the adaptive ODE's NFE in brackets):",
        "",
        *markdown_table(["sampler", "NFE", *rows], fid_rows(list(rows.values()))),
        "",
        f"FID of the next {args.fid_samples} test images against the same "
        f"{args.fid_samples}, the score of a sampler of the data itself at this size: "
        f"{held_out_fid(splits, args.fid_samples, features):.2f}.",
    ]
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
