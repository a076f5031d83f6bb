"""Training loop with EMA, checkpoints, exact resumption and JSON-lines metrics.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one line every
``log_every`` steps) and ``checkpoint.pt`` (written every ``checkpoint_every`` steps and at
the end). A checkpoint stores the model, its EMA, the optimiser and LR scheduler, the step,
the minibatch generator and the global RNG state, so a resumed run continues exactly the
same stream as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ndm.builders import build_model
from ndm.checkpoint import atomic_write, load_checkpoint, save_checkpoint, save_json
from ndm.config import DataConfig, RunConfig, config_from_dict, config_to_dict
from ndm.data.toy2d import toy2d_splits
from ndm.model import NDM

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
RUN_KEYS = ("config", "step", "model", "ema", "dim")
TERMS = ("prior", "diffusion", "reconstruction")


def load_data(cfg: DataConfig) -> tuple[Tensor, Tensor]:
    """Train ``[n_train, 2]`` and test ``[n_test, 2]`` splits of the configured toy dataset."""
    return toy2d_splits(cfg.dataset, cfg.n_train, cfg.n_test, cfg.seed)


def check_data(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty floating ``[N, D]`` tensor of finite values."""
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"training data must have shape [N, D] with N, D > 0, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"training data must be floating point, got {x.dtype}")
    bad = int((~torch.isfinite(x)).any(dim=1).sum())
    if bad:
        raise ValueError(f"training data holds NaN or inf values in {bad} of {x.shape[0]} rows")


def _warmup(steps: int) -> Callable[[int], float]:
    """LR factor rising linearly to 1 over the first ``steps`` steps."""
    return lambda step: min(1.0, (step + 1) / steps) if steps > 0 else 1.0


def _ema(model: NDM, decay: float) -> AveragedModel:
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


def _check_resumable(state: dict[str, Any], cfg: RunConfig, dim: int, path: Path) -> None:
    """The checkpoint must match the data and model of ``cfg`` and stop before its end."""
    saved, wanted = config_to_dict(config_from_dict(state["config"])), config_to_dict(cfg)
    changed = [
        f"{section}.{name}"
        for section in ("data", "model")
        for name, value in wanted[section].items()
        if saved[section][name] != value
    ]
    if changed:
        raise ValueError(f"cannot resume {path}: the config changes {changed}")
    if state["dim"] != dim:
        raise ValueError(
            f"cannot resume {path}: it was trained on {state['dim']}-D data, not {dim}-D"
        )
    if state["step"] >= cfg.train.steps:
        raise ValueError(
            f"cannot resume {path}: the run already reached step {state['step']} "
            f"(steps = {cfg.train.steps}); ask for more steps to continue it"
        )


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (by a run stopped after its last checkpoint)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        atomic_write(path, lambda file: file.write("".join(f"{k}\n" for k in kept).encode()))


def _step(
    model: NDM, optimizer: torch.optim.Optimizer, x: Tensor, grad_clip: float
) -> dict[str, float]:
    """One clipped optimiser step on the minibatch ``x``; returns the loss, its NELBO terms,
    the learning rate and the gradient norm before clipping. Raises ``FloatingPointError``,
    leaving the parameters untouched, when the loss or the gradient is not finite."""
    if model.objective == "simple":
        loss, terms = model.loss(x).mean(), {}
    else:
        parts = model.loss_terms(x)
        loss, terms = parts.total.mean(), {k: getattr(parts, k).mean() for k in TERMS}
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    values = {"loss": loss.item(), "grad_norm": grad_norm.item()}
    if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"non-finite loss or gradient {values}")
    values["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step()
    return values | {k: v.item() for k, v in terms.items()}


def train(
    cfg: RunConfig, run_dir: str | Path, resume: bool = False, train_data: Tensor | None = None
) -> NDM:
    """Train for ``cfg.train.steps`` steps in ``run_dir`` and return the EMA model.

    ``train_data`` (``[N, D]``) replaces the configured toy dataset. With ``resume``,
    continue the checkpoint in ``run_dir`` up to ``cfg.train.steps``; without it, a run
    folder that already holds a checkpoint is refused. Bad data and refused runs raise
    before anything is written; a non-finite loss or gradient raises ``FloatingPointError``
    and leaves the last checkpoint as it was.
    """
    run_dir = Path(run_dir)
    data = load_data(cfg.data)[0] if train_data is None else train_data
    check_data(data)
    ckpt_path = run_dir / CHECKPOINT
    dim, device = data.shape[1], torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.train.device!r} asked for, but CUDA is not available")
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path, RUN_KEYS)
        _check_resumable(state, cfg, dim, ckpt_path)
    elif ckpt_path.exists():
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint; resume it or choose another run folder"
        )

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, dim).to(device)
    ema = _ema(model, cfg.train.ema_decay)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    scheduler = LambdaLR(optimizer, _warmup(cfg.train.warmup_steps))
    batches = torch.Generator().manual_seed(cfg.train.seed)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.set_state(state["generator"])
        _set_rng_state(state["rng"], device)
        start = state["step"]

    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / CONFIG, config_to_dict(cfg))
    _keep_metrics_until(run_dir / METRICS, start)

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "config": config_to_dict(cfg),
                "step": step,
                "dim": dim,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": batches.get_state(),
                "rng": _rng_state(device),
            },
        )

    data = data.to(device=device, dtype=torch.float32)
    window: list[dict[str, float]] = []
    last_saved = f"step {start}" if state is not None else "none written yet"
    progress = tqdm(range(start + 1, cfg.train.steps + 1), initial=start, total=cfg.train.steps)
    for step in progress:
        began = time.perf_counter()
        index = torch.randint(data.shape[0], (cfg.train.batch_size,), generator=batches)
        try:
            values = _step(model, optimizer, data[index.to(device)], cfg.train.grad_clip)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"{error} at step {step}; training stopped, last checkpoint kept ({last_saved})"
            ) from error
        scheduler.step()
        ema.update_parameters(model)
        window.append(values | {"seconds_per_step": time.perf_counter() - began})

        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            means = {k: sum(v[k] for v in window) / len(window) for k in window[0]}
            line = {"step": step} | means | {"lr": values["lr"]}
            with (run_dir / METRICS).open("a") as file:
                file.write(json.dumps(line) + "\n")
            progress.set_postfix(loss=f"{line['loss']:.3f}")
            window = []
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            checkpoint(step)
            last_saved = f"step {step}"
    progress.close()
    return ema.module


def _checkpoint_in(run_dir: str | Path) -> Path:
    """``run_dir/checkpoint.pt``; ``FileNotFoundError`` if the run folder does not exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    return run_dir / CHECKPOINT


def load_run(run_dir: str | Path) -> tuple[RunConfig, NDM]:
    """``(config, model with the EMA weights)`` of the checkpoint in ``run_dir``."""
    path = _checkpoint_in(run_dir)
    state = load_checkpoint(path, RUN_KEYS)
    try:
        cfg = config_from_dict(state["config"])
        ema = _ema(build_model(cfg.model, state["dim"]), cfg.train.ema_decay)
        ema.load_state_dict(state["ema"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a usable ndm run: {error}") from error
    return cfg, ema.module


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config saved in the checkpoint of ``run_dir``."""
    path = _checkpoint_in(run_dir)
    state = load_checkpoint(path)
    try:
        return config_from_dict(state["config"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
