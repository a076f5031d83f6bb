"""What a trained run reports: its figures, its metrics (likelihoods, and FID for images),
each metric record with what produced it, and the summary printed to the user."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor

from ndm.data.loading import Splits, model_input
from ndm.diffusion.flow import FlowDiffusion
from ndm.evaluation.evaluate import evaluate, fid_features, sample_images, sample_quality
from ndm.models.latent import LatentNDM
from ndm.models.protocol import DiffusionModel
from ndm.plots.images import plot_image_samples, plot_image_transform, plot_predictions_from_noise
from ndm.plots.points import plot_samples, plot_scale, plot_trajectories, plot_transform
from ndm.runs.checkpoint import save_json
from ndm.runs.config import RunConfig, config_to_dict
from ndm.runs.folder import METRICS_SUMMARY
from ndm.runs.inputs import load_data
from ndm.runs.loggers import finite_scalars, open_loggers, uint8_grid

EVAL_LEVELS = ("full", "fast", "none")
FAST_EVAL = 100  # test examples and plot samples of --eval fast
TRAJECTORY_STEPS = 50
TRANSFORM_POINTS = 2000
TRANSFORM_IMAGES = 6


def evaluation_level(cfg: RunConfig, level: str) -> RunConfig:
    """``cfg`` evaluated as ``--eval`` asks: ``full`` as configured; ``fast`` on at most
    :data:`FAST_EVAL` test examples and plot samples, tolerances 1e-3, no FID."""
    if level != "fast":
        return cfg
    e = cfg.eval
    fast = replace(
        e,
        n_eval=min(e.n_eval, FAST_EVAL),
        n_samples=min(e.n_samples, FAST_EVAL),
        rtol=max(e.rtol, 1e-3),
        atol=max(e.atol, 1e-3),
        nelbo_time_samples=min(e.nelbo_time_samples, 8),
        fid_samples=0,
    )
    return replace(cfg, eval=fast)


def run_metrics(model: DiffusionModel, cfg: RunConfig, splits: Splits) -> dict:
    """Likelihoods on the test split (:func:`~ndm.evaluation.evaluate.evaluate`), and FID
    when asked for on images."""
    metrics = evaluate(model, splits, cfg.eval)
    if splits.is_image and cfg.eval.fid_samples:
        print(f"FID on {cfg.eval.fid_samples} samples", file=sys.stderr)
        features, info = fid_features(splits, cfg.eval, cfg.train.seed)
        steps = cfg.model.num_steps if cfg.eval.fid_steps is None else cfg.eval.fid_steps
        metrics |= info | sample_quality(model, splits, cfg.eval, features, steps)
    return metrics


def record(metrics: dict, cfg: RunConfig, step: int) -> dict:
    """``metrics`` with what produced them: the checkpoint's step, the time, the data path
    and the evaluation settings."""
    return {
        "step": step,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_path": cfg.data.path,
        "eval_settings": asdict(cfg.eval),
    } | metrics


def log_evaluation(cfg: RunConfig, run_dir: Path, metrics: dict, samples: Tensor | None) -> None:
    """Send the metrics (and image samples, ``[N, C, H, W]``) to the run's loggers, at the
    checkpoint's step."""
    for logger in open_loggers(cfg.train.loggers, run_dir, config_to_dict(cfg)):
        logger.scalars(metrics["step"], finite_scalars("eval", metrics))
        if samples is not None:
            logger.images(metrics["step"], "eval/samples", uint8_grid(samples[:64]))
        logger.close()


def draw_samples(
    model: DiffusionModel,
    splits: Splits,
    n: int,
    sampler: str,
    steps: int,
    generator: torch.Generator,
    **options: object,
) -> tuple[Tensor, float, Tensor | None]:
    """``(samples [n, ...] on the CPU, network evaluations per batch, trajectory)`` of the
    named sampler: images quantised to the data's levels, drawn in batches; points in one
    batch, with the ``trajectory`` ``[steps + 1, n, D]`` when ``options`` ask for it."""
    if splits.is_image:
        samples, nfe = sample_images(model, splits, n, sampler, steps, generator, **options)
        return samples, nfe, None
    result = model.sample((n, *splits.shape), sampler, steps, generator, **options)
    return result.sample.cpu(), float(result.nfe), result.trajectory


def plot_drawn(samples: Tensor, splits: Splits, out: Path, caption: str) -> None:
    """The samples beside as many test examples (training points where there are none),
    in one figure at ``out``."""
    n = samples.shape[0]
    if splits.is_image:
        test = model_input(splits.test[:n], splits, None, augment=False)
        plot_image_samples(samples, test, out, caption=caption)
    else:  # a points file may hold no test points: then the training ones
        shown = splits.test if splits.test.shape[0] else splits.train
        plot_samples(samples, shown[:n], out, caption)


def _plot_model(model: DiffusionModel, cfg: RunConfig, splits: Splits, run_dir: Path) -> None:
    """What the learned transform does, for a pixel model: ``F_phi(x, t)`` across ``t``
    and, for images, the predictions from noise (a latent NDM's act on latents); for a
    2-D NFDM also its learned scale."""
    if isinstance(model, LatentNDM):
        return
    if splits.is_image:
        test = model_input(splits.test[:TRANSFORM_IMAGES], splits, None, augment=False)
        plot_image_transform(model, test, run_dir / "transform.png")
        shape, out = splits.shape, run_dir / "predictions.png"
        plot_predictions_from_noise({cfg.model.transform: model}, shape, out)
    else:
        shown = splits.test if splits.test.shape[0] else splits.train
        plot_transform(model, shown[:TRANSFORM_POINTS], run_dir / "transform.png")
        if isinstance(model.process, FlowDiffusion):
            plot_scale(model.process, shown[:TRANSFORM_POINTS], run_dir / "scale.png")


def report_run(model: DiffusionModel, cfg: RunConfig, run_dir: Path, level: str) -> dict:
    """Write the figures and ``metrics.json`` of a trained run, evaluated at ``level``
    (``fast`` or ``full``, :func:`evaluation_level`); return the metrics."""
    cfg = evaluation_level(cfg, level)
    splits = load_data(cfg.data)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.train.seed)
    e = cfg.eval
    print(f"sampling {e.n_samples} examples along the ODE", file=sys.stderr)
    options: dict[str, object] = {"rtol": e.rtol, "atol": e.atol}
    steps = 1  # images: dopri5 chooses its own steps
    if not splits.is_image:  # points: also the trajectory, kept on TRAJECTORY_STEPS steps
        steps, options = TRAJECTORY_STEPS, options | {"method": "dopri5", "trajectory": True}
    samples, nfe, trajectory = draw_samples(
        model, splits, e.n_samples, "ode", steps, generator, **options
    )
    caption = f"ode-dopri5, rtol {e.rtol:g}, NFE {nfe:.0f}"
    plot_drawn(samples, splits, run_dir / "samples.png", caption)
    _plot_model(model, cfg, splits, run_dir)
    if trajectory is not None:
        test = splits.test[:TRANSFORM_POINTS]
        plot_trajectories(trajectory, run_dir / "trajectories.png", test)
    metrics = record(run_metrics(model, cfg, splits), cfg, cfg.train.steps)
    save_json(run_dir / METRICS_SUMMARY, metrics)
    log_evaluation(cfg, run_dir, metrics, samples if splits.is_image else None)
    return metrics


def summary(metrics: dict) -> str:
    """The lines printed after an evaluation: NLL, NELBO and its terms, the data's entropy
    when known, and FID."""
    nll = (
        f"test NLL   {metrics['nll']:.4f} +- {metrics['nll_stderr']:.4f} nats "
        f"({metrics['nll_bpd']:.4f} bits/dim, {metrics['nll_nfe']:.0f} NFE per batch)"
        if "nll" in metrics
        else f"test NLL   left out: {metrics.get('nll_failure')}"
    )
    lines = [
        nll,
        f"test NELBO {metrics['nelbo']:.4f} +- {metrics['nelbo_stderr']:.4f} nats "
        f"({metrics['nelbo_bpd']:.4f} bits/dim; prior {metrics['nelbo_prior']:.4f}, "
        f"diffusion {metrics['nelbo_diffusion']:.4f}, "
        f"reconstruction {metrics['nelbo_reconstruction']:.4f})",
    ]
    if "nelbo_decoder" in metrics:
        lines[1] = lines[1][:-1] + (
            f"; decoder -log p(x|y) {metrics['nelbo_decoder']:.4f}, "
            f"encoder -H[q(y|x)] {metrics['nelbo_encoder']:.4f}; bits/dim of the data, "
            f"latents of {metrics['latent_dims']} dimensions)"
        )
    if metrics["entropy"] is not None:
        lines.append(
            f"data entropy {metrics['entropy']:.4f} nats ({metrics['entropy_bpd']:.4f} bits/dim)"
        )
    if "fid" in metrics:
        accuracy = metrics.get("classifier_test_accuracy")
        features = metrics["fid_features"] + (
            "" if accuracy is None else f", test accuracy {accuracy:.3f}"
        )
        lines.append(
            f"FID {metrics['fid']:.3f} ({metrics['fid_samples']} samples, {metrics['fid_sampler']} "
            f"{metrics['fid_steps']} steps; features: {features})"
        )
    return "\n".join(lines)
