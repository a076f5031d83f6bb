"""The shape of the paper's Table 3: a latent NDM with a learned transform against plain latent
diffusion (identity transform), same autoencoder settings, networks and budget.

Both models are :class:`~ndm.models.latent.LatentNDM` runs that differ only in ``transform``. Each row
reports, in bits/dim of the 8-bit data (divided by the data's dimension, not the latents'):
the bound with the probability-flow ODE's ``-log p(y)`` (NLL, Hutchinson, dopri5), the bound
with the NDM's continuous NELBO of ``y`` and its decoder and encoder terms, and FID (features
of a small classifier trained on the training split, or Inception-v3 from ``--fid-weights``)
of ancestral samples decoded to the mode of ``p(x | y)``. Usage::

    python -m benchmarks.latent_fashion_mnist --preset cpu --out benchmarks/results/latent_fashion_mnist.md
    python -m benchmarks.latent_fashion_mnist --preset gpu --path celeba_hq_256/ \\
        --fid-weights pt_inception-2015-12-05-6726825d.pth          # 256x256 image folder, GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.harness import environment, report
from ndm.evaluation.evaluate import evaluate, fid_features, sample_quality
from ndm.runs.config import (
    DataConfig,
    EvalConfig,
    LatentConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from ndm.runs.inputs import load_data
from ndm.runs.training import train

DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"
PRESETS = {
    # Fashion-MNIST 16x16 -> latents [4, 4, 4]; sized to run in under 25 minutes on 2 shared
    # CPU cores.
    "cpu": {
        "dataset": "fashion_mnist",
        "resolution": 16,
        "latent_channels": 4,
        "latent_downsample": 2,
        "latent_hidden": 32,
        "latent_mode": "two_stage",
        "architecture": "cpu8",
        "autoencoder_steps": 300,
        "steps": 900,
        "batch_size": 32,
        "lr": 1e-3,
        "ema_decay": 0.995,
        "precision": "fp32",
        "n_eval": 100,
        "fid_samples": 300,
        "fid_steps": 100,
    },
    # A folder of 256x256 images (CelebA-HQ style) -> latents [4, 32, 32], trained end to end.
    "gpu": {
        "dataset": "folder",
        "resolution": 256,
        "latent_channels": 4,
        "latent_downsample": 3,
        "latent_hidden": 128,
        "latent_mode": "end_to_end",
        "architecture": "imagenet32",
        "autoencoder_steps": 20_000,
        "steps": 200_000,
        "batch_size": 32,
        "lr": 2e-4,
        "ema_decay": 0.9999,
        "precision": "bf16",
        "n_eval": 1000,
        "fid_samples": 10_000,
        "fid_steps": 1000,
    },
}
MODELS = (("latent diffusion (F = y)", "identity"), ("latent NDM (learned F)", "learned"))


def _config(args: argparse.Namespace, transform: str) -> RunConfig:
    p = PRESETS[args.preset]
    return RunConfig(
        data=DataConfig(dataset=p["dataset"], path=args.path, resolution=p["resolution"]),
        model=ModelConfig(
            transform=transform,
            architecture=p["architecture"],
            objective="continuous",
            time_sampling="gamma",
            schedule="linear",
        ),
        latent=LatentConfig(
            latent_mode=p["latent_mode"],
            latent_channels=p["latent_channels"],
            latent_downsample=p["latent_downsample"],
            latent_hidden=p["latent_hidden"],
            autoencoder_steps=p["autoencoder_steps"],
        ),
        train=TrainConfig(
            steps=p["steps"] if args.steps is None else args.steps,
            batch_size=p["batch_size"],
            lr=p["lr"],
            warmup_steps=100,
            ema_decay=p["ema_decay"],
            checkpoint_every=1000,
            log_every=50,
            device="auto",
            precision=p["precision"],
        ),
        eval=EvalConfig(
            n_eval=p["n_eval"],
            rtol=1e-3,
            atol=1e-3,
            nelbo_time_samples=16,
            fid_samples=p["fid_samples"],
            fid_sampler="ddpm",
            fid_steps=p["fid_steps"],
            fid_weights=args.fid_weights,
            classifier_steps=args.classifier_steps,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--path", default=DEBIAN_PATH, help="folder of the dataset's files")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the preset's)"
    )
    parser.add_argument("--fid-weights", default="", help="Inception-v3 FID weights file")
    parser.add_argument("--classifier-steps", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "latent")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    cfg0 = _config(args, "identity")
    splits = load_data(cfg0.data)
    features, info = fid_features(splits, cfg0.eval)
    rows = []
    for label, transform in MODELS:
        cfg = _config(args, transform)
        run_dir = args.runs_dir / f"{args.preset}-{transform}"
        start = time.perf_counter()
        model = train(cfg, run_dir, resume=(run_dir / "checkpoint.pt").exists())
        seconds = time.perf_counter() - start
        model.eval()
        row = evaluate(model, splits, cfg.eval)
        row |= sample_quality(model, splits, cfg.eval, features, cfg.eval.fid_steps)
        rows.append((label, row, seconds))

    p = PRESETS[args.preset]
    lat = cfg0.latent
    side = p["resolution"] // 2**lat.latent_downsample
    accuracy = info.get("classifier_test_accuracy")
    feature_text = (
        "Inception-v3"
        if accuracy is None
        else f"a classifier trained on the training split (test accuracy {accuracy:.3f})"
    )
    lines = [
        f"# Latent NDM against latent diffusion, {p['dataset']} {p['resolution']}x"
        f"{p['resolution']} (bits/dim of the data)",
        "",
        f"Command: `python -m benchmarks.latent_fashion_mnist --preset {args.preset}"
        f"{f' --threads {args.threads}' if args.threads is not None else ''}"
        f"{' --out ' + str(args.out) if args.out else ''}`. {environment()}"
        f"; total "
        f"{time.perf_counter() - began:.0f} s.",
        "",
        f"Preset {args.preset}: autoencoder to latents [{lat.latent_channels}, {side}, {side}] "
        f"(width {lat.latent_hidden}, discretised-logistic decoder), mode {lat.latent_mode}, "
        f"{lat.autoencoder_steps} autoencoder steps within {cfg0.train.steps} steps of batch "
        f"{cfg0.train.batch_size}; NDM: U-Net {p['architecture']} for x_theta and F_phi, "
        "linear schedule, continuous objective. Bounds on "
        f"{cfg0.eval.n_eval} test images (NLL: Hutchinson, 1 probe, dopri5 rtol=atol=1e-3; "
        f"NELBO: {cfg0.eval.nelbo_time_samples} stratified time draws); FID from "
        f"{cfg0.eval.fid_samples} ancestral samples ({cfg0.eval.fid_steps} steps) decoded to "
        f"the mode of p(x | y), against as many test images, features of {feature_text}.",
        "",
        "| model | NLL bound ↓ | NELBO ↓ | decoder -log p(x\\|y) | encoder -H[q] | latent NELBO "
        "| FID ↓ | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r, seconds in rows:
        latent_bpd = sum(r[f"nelbo_{k}_bpd"] for k in ("prior", "diffusion", "reconstruction"))
        lines.append(
            f"| {label} | {r['nll_bpd']:.3f} ± {r['nll_bpd_stderr']:.3f} | "
            f"{r['nelbo_bpd']:.3f} ± {r['nelbo_bpd_stderr']:.3f} | "
            f"{r['nelbo_decoder_bpd']:.3f} | {r['nelbo_encoder_bpd']:.3f} | {latent_bpd:.3f} | "
            f"{r['fid']:.2f} | {seconds:.0f} |"
        )
    table = "\n".join(lines)
    report(table, args.out)


if __name__ == "__main__":
    main()
