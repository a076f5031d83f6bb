"""Training loop with EMA, checkpoints, exact resumption, DDP and JSON-lines metrics.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one line every
``log_every`` steps, also sent to the loggers of ``train.loggers``, :mod:`ndm.loggers`), and
``checkpoint.pt`` (written every ``checkpoint_every`` steps and at the end). A metrics line
holds the optimised ``loss``; for the NELBO objectives the ``nelbo`` estimate and its terms,
and for images its ``bits_per_dim`` (of dequantised images, with the offset
``log2(L / 2)``, for a pixel run); with a kinetic weight the unweighted ``kinetic``
penalty, so that ``loss = nelbo + kinetic_weight * kinetic``; and ``lr``, ``grad_norm`` (for
a learned transform also ``grad_norm_phi`` and ``grad_norm_theta``, its share and the
rest's) and ``seconds_per_step``. A checkpoint stores the model, its EMA, the optimiser and LR
scheduler, the step, the minibatch generator and the global RNG state, so a resumed run
continues exactly the same stream as an uninterrupted one. While it trains, a run holds its
folder alone and stops gracefully on ``SIGTERM`` and ``SIGINT`` (:mod:`ndm.run_guard`).

Each step draws a global minibatch of ``batch_size`` examples, cut into ``world_size *
grad_accum`` equal micro-batches, each copied from the host-side data to the device on its
own (pinned and non-blocking on CUDA), so the training set never has to fit on the
device; micro-batch ``k`` takes its noise from a generator seeded by ``(seed, step, k)``.
Under ``torchrun`` the model is wrapped in DDP and process ``r`` takes micro-batches
``r * grad_accum ...``; only rank 0 writes the run folder. A run on one process
with ``grad_accum = k`` therefore takes the same steps as ``k`` processes.

A latent run (:mod:`ndm.latent`) trains its autoencoder alone for the first
``autoencoder_steps`` steps; at the change of stage the EMA of the autoencoder restarts from
its current weights and the learning-rate warmup starts again.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ndm.builders import build_run_model
from ndm.checkpoint import (
    atomic_write,
    load_checkpoint,
    non_finite_tensors,
    save_checkpoint,
    save_json,
)
from ndm.config import (
    DataConfig,
    EvalConfig,
    RunConfig,
    TrainConfig,
    config_from_record,
    config_to_dict,
    with_resolved_time_scales,
)
from ndm.data.loading import Splits, load_splits, model_input
from ndm.data.points import POINTS_DATASET, read_points, save_points
from ndm.distributed import (
    Distributed,
    init_distributed,
    mean_over_processes,
    resolve_device,
    shard_seed,
)
from ndm.latent import LatentNDM, stage_at
from ndm.likelihood import bits_per_dim, dequantisation_offset
from ndm.loggers import check_loggers, finite_scalars, open_loggers
from ndm.model import NDM
from ndm.run_guard import RunStopped, StopSignals, exclusive_run_folder, remove_stale_temporaries

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
METRICS_SUMMARY = "metrics.json"
DATA = "data.npz"
RUN_FILES = (CHECKPOINT, CONFIG, METRICS, METRICS_SUMMARY, DATA)
RUN_KEYS = ("config", "step", "model", "ema", "shape", "num_levels")
RUN_SECTIONS = ("data", "model", "latent", "train")
#: What a resumed run may change: how long it runs, how often and where it logs and saves.
RESUMABLE_SETTINGS = (
    "data.cache",
    "train.steps",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.loggers",
)
MODEL_KINDS = ("pixel", "latent")


def load_data(cfg: DataConfig) -> Splits:
    """The train and test splits of the configured dataset."""
    return load_splits(
        cfg.dataset, cfg.n_train, cfg.n_test, cfg.seed, cfg.path, cfg.resolution, cfg.cache
    )


def check_data(x: Tensor, num_levels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is non-empty floating ``[N, D]`` data of finite
    values, or (``num_levels`` given) integer images ``[N, C, H, W]`` with levels in
    ``0..num_levels-1``."""
    if num_levels is not None:
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(f"image data must have shape [N, C, H, W], got {tuple(x.shape)}")
        if x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"image data must hold integer levels, got {x.dtype}")
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= num_levels:
            raise ValueError(f"image levels must lie in 0..{num_levels - 1}, got {low}..{high}")
        return
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"training data must have shape [N, D] with N, D > 0, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"training data must be floating point, got {x.dtype}")
    bad = int((~torch.isfinite(x)).any(dim=1).sum())
    if bad:
        raise ValueError(f"training data holds NaN or inf values in {bad} of {x.shape[0]} rows")


def _warmup(steps: int, restart: int = 0) -> Callable[[int], float]:
    """LR factor rising linearly to 1 over the first ``steps`` steps, and again over the
    ``steps`` steps from step ``restart`` on."""

    def factor(step: int) -> float:
        since = step - restart if step >= restart else step
        return min(1.0, (since + 1) / steps) if steps > 0 else 1.0

    return factor


def _ema(model: NDM | LatentNDM, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _saved_config(state: dict[str, Any]) -> RunConfig:
    """The config of a checkpoint (settings an earlier version did not store: as it ran)."""
    return config_from_record(state["config"])


def _fixed_settings_changed(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``section.name`` of each setting a resumed run may not change (all but
    :data:`RESUMABLE_SETTINGS`) whose value differs between the config dicts."""
    return [
        f"{section}.{name}"
        for section in RUN_SECTIONS
        for name, value in wanted[section].items()
        if f"{section}.{name}" not in RESUMABLE_SETTINGS and saved[section].get(name) != value
    ]


def _check_resumable(
    state: dict[str, Any], cfg: RunConfig, shape: tuple[int, ...], path: Path
) -> None:
    """The checkpoint must have been trained with the data, model and optimisation settings
    of ``cfg`` and stop before its end."""
    saved = config_to_dict(with_resolved_paths(_saved_config(state)))
    changed = _fixed_settings_changed(saved, config_to_dict(cfg))
    if changed:
        raise ValueError(
            f"cannot resume {path}: the config changes {changed}; a resumed run keeps the "
            f"settings it was trained with (it may change only {list(RESUMABLE_SETTINGS)})"
        )
    if tuple(state["shape"]) != shape:
        raise ValueError(
            f"cannot resume {path}: it was trained on examples of shape {tuple(state['shape'])},"
            f" not {shape}"
        )
    if state["step"] >= cfg.train.steps:
        raise ValueError(
            f"cannot resume {path}: the run already reached step {state['step']} "
            f"(steps = {cfg.train.steps}); ask for more steps to continue it"
        )


def _check_record(path: Path, state: dict[str, Any]) -> None:
    """``config.json`` of a run being resumed is a record of its checkpoint's config: raise
    ``ValueError`` if it was edited (a resumed segment may differ only in
    :data:`RESUMABLE_SETTINGS`)."""
    if not path.exists():
        return
    try:
        recorded = config_to_dict(config_from_record(json.loads(path.read_text())))
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not the config of this run ({error})") from error
    changed = _fixed_settings_changed(config_to_dict(_saved_config(state)), recorded)
    if changed:
        raise ValueError(
            f"{path} differs from the config its checkpoint was trained with in {changed}; "
            "it is a record, not an input: restore it, and give changes as options of the resume"
        )


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (by a run stopped after its last checkpoint),
    and a last line cut short by a kill during its write. Any other line that is not a JSON
    object with an integer ``step`` raises ``ValueError`` naming the file and the line."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            logged = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the write of the last line was interrupted
                continue
            raise ValueError(f"{path}, line {number}: not a JSON metrics line ({error})") from error
        if not isinstance(logged, dict) or not isinstance(logged.get("step"), int):
            raise ValueError(f"{path}, line {number}: a metrics line needs an integer 'step'")
        if logged["step"] <= step:
            kept.append(line)
    atomic_write(path, lambda file: file.write("".join(f"{k}\n" for k in kept).encode()))


def _micro_batches(cfg: RunConfig, place: Distributed) -> int:
    """Examples per micro-batch; the global batch must split evenly over processes and
    accumulation steps."""
    parts = place.world_size * cfg.train.grad_accum
    if cfg.train.batch_size % parts:
        raise ValueError(
            f"batch_size {cfg.train.batch_size} does not split into {place.world_size} "
            f"processes x {cfg.train.grad_accum} accumulation steps"
        )
    return cfg.train.batch_size // parts


def _is_transform_parameter(name: str) -> bool:
    """Whether the parameter ``name`` belongs to the transform ``F_phi``."""
    return ".process.transform." in f".{name}"


def _transform_and_rest(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters of the transform (:func:`_is_transform_parameter`) and all others."""
    phi, rest = [], []
    for name, param in model.named_parameters():
        (phi if _is_transform_parameter(name) else rest).append(param)
    return phi, rest


def _parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one at ``cfg.lr``, or, with ``cfg.transform_lr``,
    the rest at ``lr`` (first: the logged ``lr``) and the transform's at ``transform_lr``;
    learned schedule end points (which weight decay would pull towards 0) at ``lr`` without
    weight decay."""
    params = list(model.named_parameters())
    ends = [p for name, p in params if ".endpoints." in f".{name}"]
    params = [(name, p) for name, p in params if ".endpoints." not in f".{name}"]
    groups = [{"params": ends, "weight_decay": 0.0}] if ends else []
    if not cfg.transform_lr:
        return [{"params": [p for _, p in params]}, *groups]
    rest = [p for name, p in params if not _is_transform_parameter(name)]
    phi = [p for name, p in params if _is_transform_parameter(name)]
    return [{"params": rest}] + ([{"params": phi, "lr": cfg.transform_lr}] if phi else []) + groups


def _gradient_norms(model: nn.Module) -> dict[str, float]:
    """``grad_norm_phi``: the norm of the loss gradient over the transform's parameters
    (``process.transform``), and ``grad_norm_theta`` over all others (predictor, schedule,
    autoencoder); empty when the transform has no parameters with gradients."""
    phi, theta = (
        [torch.linalg.vector_norm(p.grad.float()) for p in group if p.grad is not None]
        for group in _transform_and_rest(model)
    )
    if not phi:
        return {}
    return {
        "grad_norm_phi": torch.linalg.vector_norm(torch.stack(phi)).item(),
        "grad_norm_theta": torch.linalg.vector_norm(torch.stack(theta)).item() if theta else 0.0,
    }


def clip_gradients(model: nn.Module, max_norm: float, apart: bool = False) -> Tensor:
    """Scale the gradients so that their norm is at most ``max_norm``: over all parameters,
    or (``apart``) over the transform's (:func:`_is_transform_parameter`) and over the rest,
    each on its own. Returns the norm of all gradients before clipping."""
    if not apart:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    groups = _transform_and_rest(model)
    norms = [torch.nn.utils.clip_grad_norm_(group, max_norm) for group in groups if group]
    return torch.linalg.vector_norm(torch.stack(norms))


def _step(
    model: NDM | LatentNDM | DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[Tensor, torch.Generator]],
    cfg: RunConfig,
    place: Distributed,
) -> dict[str, float]:
    """One clipped optimiser step on this process's micro-batches ``(x, noise generator)``;
    returns the model's losses (the optimised loss, the NELBO, its terms and any penalty),
    the learning rate and the gradient norm before clipping (also split between the
    transform and the rest, :func:`_gradient_norms`), averaged over processes.
    Raises ``FloatingPointError``, leaving the parameters untouched, when the loss or the
    gradient is not finite."""
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    bf16 = cfg.train.precision == "bf16"
    for i, (x, generator) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not place.enabled else model.no_sync()
        with sync:
            with torch.autocast(place.device.type, torch.bfloat16, enabled=bf16):
                losses = model(x, generator)
            (losses["loss"].float().mean() / len(micro_batches)).backward()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float().mean().item()
    norms = _gradient_norms(model)
    grad_norm = clip_gradients(model, cfg.train.grad_clip, cfg.train.grad_clip_scope == "apart")
    values = {k: v / len(micro_batches) for k, v in sums.items()}
    values = mean_over_processes(values | {"grad_norm": grad_norm.item()} | norms, place)
    if not all(math.isfinite(values[k]) for k in ("loss", "grad_norm")):
        raise FloatingPointError(
            f"non-finite loss or gradient {{'loss': {values['loss']}, "
            f"'grad_norm': {values['grad_norm']}}}"
        )
    values["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step()
    return values


def with_resolved_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its data and FID-weights paths made absolute, so that a run can be
    sampled, evaluated and resumed from any working directory."""

    def resolved(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if path else path

    return replace(
        cfg,
        data=replace(cfg.data, path=resolved(cfg.data.path), cache=resolved(cfg.data.cache)),
        eval=replace(cfg.eval, fid_weights=resolved(cfg.eval.fid_weights)),
    )


def check_evaluable(splits: Splits, cfg: EvalConfig) -> None:
    """What the evaluation after training needs, checked before the first step: test
    examples and the FID weights file when one is named."""
    splits.require_test_examples()
    if cfg.fid_weights and not Path(cfg.fid_weights).is_file():
        raise FileNotFoundError(f"FID weights file {cfg.fid_weights} not found")


def _given_points(
    cfg: RunConfig, run_dir: Path, resume: bool, train_data: Tensor, test_data: Tensor | None
) -> tuple[RunConfig, Splits]:
    """The config and splits of a run trained on points handed to :func:`train`: its data
    section names the ``points`` file the run keeps of them (:data:`DATA`). A resumed run
    must be given the points it was trained on."""
    test = train_data[:0] if test_data is None else test_data
    for name, x in (("train_data", train_data), ("test_data", test)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    check_data(train_data)
    if test.numel():
        check_data(test)
    if test.dim() != 2 or test.shape[1] != train_data.shape[1]:
        raise ValueError(
            f"test_data must have shape [M, {train_data.shape[1]}], got {tuple(test.shape)}"
        )
    path = run_dir / DATA
    if resume and path.exists():
        kept, _ = read_points(path)
        if kept.shape != train_data.shape or not torch.equal(kept, train_data.float().cpu()):
            raise ValueError(
                f"cannot resume {run_dir}: it was trained on other points (kept in {path})"
            )
    data = DataConfig(dataset=POINTS_DATASET, path=str(path.resolve()))
    return replace(cfg, data=data), Splits(train_data, test, None, False, None)


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
    :data:`RESUMABLE_SETTINGS` may change); without it, a run folder that already holds a
    checkpoint is refused, and so is a folder another process is training in. Paths in the
    config are stored resolved. Bad data and options and refused runs raise before
    anything is written; a non-finite loss or gradient raises ``FloatingPointError`` and
    leaves the last checkpoint as it was. ``SIGTERM`` or ``SIGINT`` stops the run after the
    current step with a checkpoint of it (:class:`ndm.run_guard.RunStopped`). Under
    ``torchrun`` every process calls this.
    """
    run_dir = Path(run_dir)
    cfg = with_resolved_time_scales(with_resolved_paths(cfg))
    check_loggers(cfg.train.loggers)
    if train_data is None:
        splits = load_data(cfg.data)
        check_evaluable(splits, cfg.eval)
    else:
        cfg, splits = _given_points(cfg, run_dir, resume, train_data, test_data)
    check_data(splits.train, splits.num_levels)
    shape, data = splits.shape, splits.train
    ckpt_path = run_dir / CHECKPOINT
    place = init_distributed(cfg.train.device)
    per_micro = _micro_batches(cfg, place)
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path, RUN_KEYS)
        _check_resumable(state, cfg, shape, ckpt_path)
        _check_record(run_dir / CONFIG, state)
    elif ckpt_path.exists():
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint; resume it or choose another run folder"
        )

    device = place.device
    torch.manual_seed(cfg.train.seed)
    model = build_run_model(cfg, shape, splits.num_levels).to(device)
    latent = isinstance(model, LatentNDM)
    ema = _ema(model, cfg.train.ema_decay)
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    stage_change = cfg.latent.autoencoder_steps if latent else 0
    scheduler = LambdaLR(optimizer, _warmup(cfg.train.warmup_steps, stage_change))
    batches = torch.Generator().manual_seed(cfg.train.seed)
    start = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            batches.set_state(state["generator"])
            _set_rng_state(state["rng"], device)
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            reason = str(error).strip().split("\n")[0][:200]
            raise ValueError(
                f"cannot resume {ckpt_path}: its state does not fit its config ({reason})"
            ) from error
        start = state["step"]
    # a latent run leaves the NDM (first stage) or the autoencoder (two_stage) without gradients
    wrapped = (
        DistributedDataParallel(model, find_unused_parameters=latent) if place.enabled else model
    )

    guard = contextlib.ExitStack()
    loggers: list = []
    if place.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        guard.enter_context(exclusive_run_folder(run_dir))
        remove_stale_temporaries(run_dir)
        if train_data is not None and state is None:
            atomic_write(run_dir / DATA, lambda file: save_points(file, data, splits.test))
        save_json(run_dir / CONFIG, config_to_dict(cfg))
        _keep_metrics_until(run_dir / METRICS, start)
        loggers = open_loggers(cfg.train.loggers, run_dir, config_to_dict(cfg), start)
        for logger in loggers:
            guard.callback(logger.close)
    stop = guard.enter_context(StopSignals())
    with guard:

        def checkpoint(step: int) -> None:
            save_checkpoint(
                ckpt_path,
                {
                    "config": config_to_dict(cfg),
                    "step": step,
                    "shape": list(shape),
                    "num_levels": splits.num_levels,
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": batches.get_state(),
                    "rng": _rng_state(device),
                    "window": window,
                },
            )

        # the data stay on the host; each micro-batch is copied to the device on its own
        pinned = device.type == "cuda"
        dims = math.prod(shape)
        # a pixel model is a density of dequantised images; a latent one's decoder is discrete
        offset = dequantisation_offset(splits.num_levels) if splits.is_image and not latent else 0.0
        # steps since the last metrics line; kept in checkpoints, so a resumed line is whole
        window: list[dict[str, float]] = [] if state is None else list(state.get("window", []))
        if cfg.train.warmup_steps > cfg.train.steps and place.is_main:
            warnings.warn(
                f"warmup_steps {cfg.train.warmup_steps} > steps {cfg.train.steps}: the run ends "
                f"at {cfg.train.steps / cfg.train.warmup_steps:.1%} of the learning rate",
                stacklevel=2,
            )
        last_saved = f"step {start}" if state is not None else "none written yet"
        progress = tqdm(
            range(start + 1, cfg.train.steps + 1),
            initial=start,
            total=cfg.train.steps,
            disable=not place.is_main,
        )
        for step in progress:
            began = time.perf_counter()
            if latent:
                model.stage = stage_at(step, cfg.latent.autoencoder_steps)
                if stage_change and step == stage_change + 1:
                    ema.module.autoencoder.load_state_dict(model.autoencoder.state_dict())
            index = torch.randint(data.shape[0], (cfg.train.batch_size,), generator=batches)
            micro_batches = []
            for m in range(cfg.train.grad_accum):
                shard = place.rank * cfg.train.grad_accum + m
                generator = torch.Generator(device).manual_seed(
                    shard_seed(cfg.train.seed, step, shard)
                )
                rows = index[shard * per_micro : (shard + 1) * per_micro]
                batch = data[rows].pin_memory() if pinned else data[rows]
                x = model_input(
                    batch.to(device, non_blocking=True), splits, generator, augment=True
                )
                micro_batches.append((x, generator))
            try:
                values = _step(wrapped, optimizer, micro_batches, cfg, place)
            except FloatingPointError as error:
                raise FloatingPointError(
                    f"{error} at step {step}; training stopped, last checkpoint kept ({last_saved})"
                ) from error
            scheduler.step()
            ema.update_parameters(model)
            window.append(values | {"seconds_per_step": time.perf_counter() - began})
            if place.is_main and step % cfg.train.log_every:  # the line's own postfix below
                progress.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)

            if place.is_main and (step % cfg.train.log_every == 0 or step == cfg.train.steps):
                means = {k: sum(v[k] for v in window) / len(window) for k in window[0]}
                line = {"step": step} | means | {"lr": values["lr"]}
                if splits.is_image and "nelbo" in line:
                    line["bits_per_dim"] = float(
                        bits_per_dim(torch.tensor(line["nelbo"]), dims, offset)
                    )
                with (run_dir / METRICS).open("a") as file:
                    file.write(json.dumps(line) + "\n")
                for logger in loggers:
                    logger.scalars(step, finite_scalars("train", means | {"lr": values["lr"]}))
                shown = {"loss": f"{line['loss']:.3f}"}
                if "kinetic" in line:  # else the NELBO is the loss
                    shown |= {k: f"{line[k]:.3f}" for k in ("nelbo", "kinetic") if k in line}
                if "bits_per_dim" in line:
                    shown["bpd"] = f"{line['bits_per_dim']:.3f}"
                progress.set_postfix(shown)
                window = []
            if place.is_main and (
                step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps
            ):
                checkpoint(step)
                last_saved = f"step {step}"
            if stop.signum is not None:
                if place.is_main and last_saved != f"step {step}":
                    checkpoint(step)
                progress.close()
                raise RunStopped(stop.signum, step, ckpt_path if place.is_main else None)
        progress.close()
        return ema.module


def _checkpoint_in(run_dir: str | Path) -> Path:
    """``run_dir/checkpoint.pt``; ``FileNotFoundError`` if the run folder does not exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    return run_dir / CHECKPOINT


def _kind(latent: bool) -> str:
    return "latent" if latent else "pixel"


@dataclass(frozen=True)
class TrainedRun:
    """What a run folder's checkpoint holds for using the model: its ``config``, the
    ``model`` with the EMA weights, the ``step`` it was written at, the example ``shape``
    and the ``num_levels`` of image data (``None`` for points)."""

    config: RunConfig
    model: NDM | LatentNDM
    step: int
    shape: tuple[int, ...]
    num_levels: int | None


def read_run(
    run_dir: str | Path, kind: str | None = None, device: str | torch.device = "cpu"
) -> TrainedRun:
    """The :class:`TrainedRun` of the checkpoint in ``run_dir``, its model on ``device``
    (``"auto"``: a GPU if there is one).

    ``kind`` (``"pixel"`` or ``"latent"``), when given, is the kind of model the caller
    expects; a run of the other kind raises ``ValueError``, as does a checkpoint whose
    weights are not of the kind its config describes or are not finite.
    """
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    path = _checkpoint_in(run_dir)
    state = load_checkpoint(path, RUN_KEYS)
    try:
        cfg = _saved_config(state)
        described = _kind(cfg.latent.enabled)
        if kind is not None and kind != described:
            raise ValueError(f"it holds a {described} NDM, not a {kind} NDM")
        stored = _kind(any(key.startswith("module.autoencoder.") for key in state["ema"]))
        if stored != described:
            raise ValueError(
                f"its config describes a {described} NDM but its weights are those of a "
                f"{stored} NDM"
            )
        bad = non_finite_tensors(state["ema"])
        if bad:
            raise ValueError(f"non-finite weights in {len(bad)} tensors ({bad[0][1:]}, ...)")
        shape = tuple(state["shape"])
        model = build_run_model(cfg, shape, state["num_levels"])
        ema = _ema(model, cfg.train.ema_decay)
        ema.load_state_dict(state["ema"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a usable ndm run: {error}") from error
    model = ema.module.to(resolve_device(str(device)))
    return TrainedRun(cfg, model, state["step"], shape, state["num_levels"])


def load_run(
    run_dir: str | Path, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[RunConfig, NDM | LatentNDM]:
    """``(config, model with the EMA weights on device)`` of the run in ``run_dir``; see
    :func:`read_run`."""
    run = read_run(run_dir, kind, device)
    return run.config, run.model


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config saved in the checkpoint of ``run_dir``."""
    path = _checkpoint_in(run_dir)
    state = load_checkpoint(path)
    try:
        return _saved_config(state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
