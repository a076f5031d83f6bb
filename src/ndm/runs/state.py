"""The resumable state of a training run, in one object: the model, its EMA, the optimiser,
the learning-rate schedule, the minibatch generator, the global RNG, the metrics window and
the step. Its :meth:`TrainState.state_dict` is what a checkpoint holds beside the config,
so a resumed run continues exactly the stream of an uninterrupted one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from ndm.models.latent import LatentNDM, stage_at
from ndm.models.ndm import NDM
from ndm.runs.builders import build_run_model
from ndm.runs.config import RunConfig
from ndm.runs.folder import ema_of
from ndm.runs.optim import parameter_groups, warmup

#: Keys of :meth:`TrainState.state_dict`.
STATE_KEYS = ("step", "model", "ema", "optimizer", "scheduler", "generator", "rng", "window")


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global RNG state of the CPU (and of ``device`` when it is a GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore a state of :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainState:
    """Everything a training run changes as it steps.

    ``window`` holds the metrics of the steps since the last metrics line, so that a line
    logged after a resume averages the same steps as without the interruption.
    """

    model: NDM | LatentNDM
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    batches: torch.Generator
    device: torch.device
    step: int = 0
    window: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def create(
        cls, cfg: RunConfig, shape: tuple[int, ...], num_levels: int | None, device: torch.device
    ) -> TrainState:
        """The state at step 0: the model initialised from ``cfg.train.seed``, its EMA,
        AdamW over :func:`~ndm.runs.optim.parameter_groups` with the warm-up (which a latent
        run restarts at the change of stage) and the minibatch generator."""
        torch.manual_seed(cfg.train.seed)
        model = build_run_model(cfg, shape, num_levels).to(device)
        optimizer = torch.optim.AdamW(
            parameter_groups(model, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        stage_change = cfg.latent.autoencoder_steps if isinstance(model, LatentNDM) else 0
        scheduler = LambdaLR(optimizer, warmup(cfg.train.warmup_steps, stage_change))
        batches = torch.Generator().manual_seed(cfg.train.seed)
        return cls(model, ema_of(model, cfg.train.ema_decay), optimizer, scheduler, batches, device)

    def enter_step(self, step: int, autoencoder_steps: int) -> None:
        """Set a latent model's stage for ``step``; at the change of stage the EMA of the
        autoencoder restarts from its current weights."""
        if not isinstance(self.model, LatentNDM):
            return
        self.model.stage = stage_at(step, autoencoder_steps)
        if autoencoder_steps and step == autoencoder_steps + 1:
            self.ema.module.autoencoder.load_state_dict(self.model.autoencoder.state_dict())

    def finish_step(self, step: int, values: dict[str, float], began: float) -> None:
        """After the optimiser step ``step``, begun at ``time.perf_counter()`` ``began``:
        advance the LR schedule and the EMA, and add the step's metrics and its
        ``seconds_per_step`` to the window."""
        self.scheduler.step()
        self.ema.update_parameters(self.model)
        self.window.append(values | {"seconds_per_step": time.perf_counter() - began})
        self.step = step

    def take_window(self) -> dict[str, float]:
        """The mean of each metric over the window's steps; empties the window."""
        window, self.window = self.window, []
        return {k: sum(v[k] for v in window) / len(window) for k in window[0]}

    def state_dict(self) -> dict[str, Any]:
        """The state as tensors and plain values (:data:`STATE_KEYS`)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.batches.get_state(),
            "rng": rng_state(self.device),
            "window": list(self.window),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a checkpoint's ``window`` may be absent: empty)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.set_state(state["generator"])
        set_rng_state(state["rng"], self.device)
        self.window = list(state.get("window", []))
        self.step = int(state["step"])
