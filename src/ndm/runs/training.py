"""The training loop: :func:`train` orchestrates the parts of a run.

The parts, each in its own module: what the run trains on (:mod:`ndm.runs.inputs`), whether
it may resume (:mod:`ndm.runs.resume`), the state that makes a resume exact
(:mod:`ndm.runs.state`), the optimiser step (:mod:`ndm.runs.optim`) and the run folder
(:mod:`ndm.runs.folder`). A metrics line holds the optimised ``loss``; for the NELBO
objectives the ``nelbo`` estimate and its terms, and for images its ``bits_per_dim`` (of
dequantised images, with the offset ``log2(L / 2)``, for a pixel run); with a kinetic weight
the unweighted ``kinetic`` penalty, so that ``loss = nelbo + kinetic_weight * kinetic``; and
``lr``, ``grad_norm`` (for a learned transform also ``grad_norm_phi`` and
``grad_norm_theta``) and ``seconds_per_step``, each averaged over the steps since the line
before. While it trains, a run holds its folder alone and stops gracefully on ``SIGTERM``
and ``SIGINT`` (:mod:`ndm.runs.guard`).

Under ``torchrun`` the model is wrapped in DDP and only rank 0 writes the run folder; a run
on one process with ``grad_accum = k`` takes the same steps as ``k`` processes
(:func:`ndm.runs.inputs.draw_micro_batches`). A latent run (:mod:`ndm.models.latent`) trains
its autoencoder alone for the first ``autoencoder_steps`` steps; at the change of stage the
EMA of the autoencoder restarts from its current weights and the learning-rate warm-up
starts again.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ndm.data.atomic import atomic_write
from ndm.data.loading import Splits
from ndm.data.points import save_points
from ndm.losses.likelihood import bits_per_dim, dequantisation_offset
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.runs.checkpoint import save_checkpoint
from ndm.runs.config import (
    RunConfig,
    config_to_dict,
    with_resolved_paths,
    with_resolved_time_scales,
)
from ndm.runs.distributed import Distributed, init_distributed
from ndm.runs.folder import (
    CHECKPOINT,
    DATA,
    RUN_FILES,
    append_metrics,
    keep_metrics_until,
    write_config,
)
from ndm.runs.guard import RunStopped, StopSignals, exclusive_run_folder, remove_stale_temporaries
from ndm.runs.inputs import (
    data_digest,
    draw_micro_batches,
    micro_batch_size,
    training_splits,
)
from ndm.runs.loggers import RunLogger, check_loggers, finite_scalars, open_loggers
from ndm.runs.memory import check_host_memory, with_fitted_micro_batches
from ndm.runs.optim import optimisation_step
from ndm.runs.resume import checkpoint_to_resume
from ndm.runs.state import TrainState


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    train_data: Tensor | None = None,
    test_data: Tensor | None = None,
) -> NDM | LatentNDM:
    """Train for ``cfg.train.steps`` steps in ``run_dir`` and return the EMA model.

    ``train_data`` (``[N, D]`` points, with ``test_data`` ``[M, D]`` if any) replaces the
    configured dataset: the run keeps them in ``run_dir/data.npz`` and its config names
    that file. With ``resume``, continue the checkpoint in ``run_dir`` up to
    ``cfg.train.steps``, with the settings it was trained with (only
    :data:`~ndm.runs.resume.RESUMABLE_SETTINGS` and the evaluation settings may change);
    without it, a run folder that already holds a checkpoint is refused, and so is a folder
    another process is training in. With ``cfg.train.memory_budget``, a new run measures
    its step and chooses ``grad_accum`` before the first one (:mod:`ndm.runs.memory`).
    Paths in the config are stored resolved. Bad data and options and refused runs raise
    before anything is written; a non-finite loss or gradient raises ``FloatingPointError``
    and leaves the last checkpoint as it was.
    ``SIGTERM`` or ``SIGINT`` stops the run after the current step with a checkpoint of it
    (:class:`ndm.runs.guard.RunStopped`). Under ``torchrun`` every process calls this.
    """
    run_dir = Path(run_dir)
    cfg = with_resolved_time_scales(with_resolved_paths(cfg))
    check_loggers(cfg.train.loggers)
    cfg, splits = training_splits(cfg, run_dir, resume, train_data, test_data)
    place = init_distributed(cfg.train.device)
    micro_batch_size(cfg, place)
    check_host_memory(cfg, splits, place)
    digest = data_digest(cfg, splits)
    saved, cfg = checkpoint_to_resume(run_dir, cfg, splits.shape, resume, digest)
    state = TrainState.create(cfg, splits.shape, splits.num_levels, place.device)
    if saved is not None:
        _restore(state, saved, run_dir / CHECKPOINT)
    else:
        cfg = with_fitted_micro_batches(cfg, state.model, state.ema, splits, place)
    keep_points = train_data is not None and saved is None
    with contextlib.ExitStack() as guard:
        loggers = _open_run_folder(guard, run_dir, cfg, splits, state.step, place, keep_points)
        stop = guard.enter_context(StopSignals())
        _run_steps(cfg, splits, digest, run_dir, place, state, loggers, stop)
    return state.ema.module


def _restore(state: TrainState, saved: dict[str, Any], path: Path) -> None:
    """Load a checkpoint into ``state``; ``ValueError`` when it does not fit its config."""
    try:
        state.load_state_dict(saved)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        reason = str(error).strip().split("\n")[0][:200]
        raise ValueError(
            f"cannot resume {path}: its state does not fit its config ({reason})"
        ) from error


def _open_run_folder(
    guard: contextlib.ExitStack,
    run_dir: Path,
    cfg: RunConfig,
    splits: Splits,
    step: int,
    place: Distributed,
    keep_points: bool,
) -> list[RunLogger]:
    """On the main process: hold ``run_dir`` alone for the run, sweep stale temporaries,
    write the config (and the given points, ``keep_points``), drop metric lines after
    ``step``, and open the loggers, all closed by ``guard``. Others get no loggers."""
    if not place.is_main:
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    guard.enter_context(exclusive_run_folder(run_dir))
    remove_stale_temporaries(run_dir, RUN_FILES)
    if keep_points:
        atomic_write(run_dir / DATA, lambda file: save_points(file, splits.train, splits.test))
    write_config(run_dir, cfg)
    keep_metrics_until(run_dir, step)
    loggers = open_loggers(cfg.train.loggers, run_dir, config_to_dict(cfg), step)
    for logger in loggers:
        guard.callback(logger.close)
    return loggers


def _save(
    run_dir: Path, cfg: RunConfig, splits: Splits, digest: str | None, state: TrainState
) -> None:
    """Write the checkpoint: the config, the data's shape and ``digest``
    (:func:`~ndm.runs.inputs.data_digest`) beside the state."""
    record = {"config": config_to_dict(cfg), "shape": list(splits.shape)}
    record |= {"num_levels": splits.num_levels, "data_digest": digest}
    save_checkpoint(run_dir / CHECKPOINT, record | state.state_dict())


def _metrics_line(
    step: int, means: dict[str, float], lr: float, splits: Splits, latent: bool
) -> dict[str, float]:
    """The metrics line of ``step``: the window's means, the learning rate and, for images,
    the loss's bits/dim (a pixel model's density is of dequantised images: offset
    ``log2(L / 2)``; a latent one's decoder is discrete)."""
    line = {"step": step} | means | {"lr": lr}
    if splits.is_image and "nelbo" in line:
        offset = 0.0 if latent else dequantisation_offset(splits.num_levels)
        nats = torch.tensor(line["nelbo"])
        line["bits_per_dim"] = float(bits_per_dim(nats, math.prod(splits.shape), offset))
    return line


def _shown(line: dict[str, float]) -> dict[str, str]:
    """What the progress bar shows of a metrics line."""
    shown = {"loss": f"{line['loss']:.3f}"}
    if "kinetic" in line:  # else the NELBO is the loss
        shown |= {k: f"{line[k]:.3f}" for k in ("nelbo", "kinetic") if k in line}
    if "bits_per_dim" in line:
        shown["bpd"] = f"{line['bits_per_dim']:.3f}"
    return shown


def _run_steps(
    cfg: RunConfig,
    splits: Splits,
    digest: str | None,
    run_dir: Path,
    place: Distributed,
    state: TrainState,
    loggers: list[RunLogger],
    stop: StopSignals,
) -> None:
    """Train from ``state.step`` to ``cfg.train.steps``: log every ``log_every`` steps,
    checkpoint every ``checkpoint_every`` steps and at the end (with the data's ``digest``),
    and stop with a checkpoint when a signal arrives."""
    t = cfg.train
    latent = isinstance(state.model, LatentNDM)
    # a latent run leaves the NDM (first stage) or the autoencoder (two_stage) without gradients
    wrapped = (
        DistributedDataParallel(state.model, find_unused_parameters=latent)
        if place.enabled
        else state.model
    )
    if t.warmup_steps > t.steps and place.is_main:
        warnings.warn(
            f"warmup_steps {t.warmup_steps} > steps {t.steps}: the run ends at "
            f"{t.steps / t.warmup_steps:.1%} of the learning rate",
            stacklevel=3,
        )
    last_saved = state.step if state.step else None
    progress = tqdm(
        range(state.step + 1, t.steps + 1),
        initial=state.step,
        total=t.steps,
        disable=not place.is_main,
    )
    for step in progress:
        began = time.perf_counter()
        state.enter_step(step, cfg.latent.autoencoder_steps)
        micro_batches = draw_micro_batches(splits, cfg, place, step, state.batches)
        try:
            values = optimisation_step(wrapped, state.optimizer, micro_batches, cfg, place)
        except FloatingPointError as error:
            kept = "none written yet" if last_saved is None else f"step {last_saved}"
            raise FloatingPointError(
                f"{error} at step {step}; training stopped, last checkpoint kept ({kept})"
            ) from error
        state.finish_step(step, values, began)
        if step % t.log_every == 0 or step == t.steps:
            line = _metrics_line(step, state.take_window(), values["lr"], splits, latent)
            if place.is_main:
                append_metrics(run_dir, line)
                scalars = {k: v for k, v in line.items() if k not in ("step", "bits_per_dim")}
                for logger in loggers:
                    logger.scalars(step, finite_scalars("train", scalars))
                progress.set_postfix(_shown(line))
        elif place.is_main:
            progress.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
        if place.is_main and (step % t.checkpoint_every == 0 or step == t.steps):
            _save(run_dir, cfg, splits, digest, state)
            last_saved = step
        if stop.signum is not None:
            if place.is_main and last_saved != step:
                _save(run_dir, cfg, splits, digest, state)
            progress.close()
            raise RunStopped(stop.signum, step, run_dir / CHECKPOINT if place.is_main else None)
    progress.close()
