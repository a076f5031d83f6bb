"""Experiment loggers beside ``metrics.jsonl``: TensorBoard, Weights & Biases and MLflow.

``train.loggers`` names them, comma-separated: ``auto`` (the default) is TensorBoard when it
is installed, ``none`` is none. A logger that is asked for by name and not installed is an
error before the first step. Every logger takes training scalars (``train/<name>``),
evaluation metrics (``eval/<name>``) and sample images at a step, and a resumed run continues
the same logged run: TensorBoard drops events past the resume step (``purge_step``),
Weights & Biases resumes the id derived from the run folder, MLflow the run id kept in
``RUN/mlflow_run_id``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from ndm.data.atomic import atomic_write
from ndm.plots.images import image_grid

LOGGERS = ("tensorboard", "wandb", "mlflow")
MLFLOW_RUN_ID = "mlflow_run_id"


class RunLogger(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``{name: value}`` (names carry their ``train/`` or ``eval/`` prefix)."""

    def images(self, step: int, name: str, grid: np.ndarray) -> None:
        """Log an image ``uint8 [H, W, 3]``."""

    def close(self) -> None: ...


def _module(name: str, package: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ValueError(
            f"logger {package!r} needs the {package} package: pip install {package}"
        ) from error


class TensorBoardLogger:
    def __init__(self, run_dir: Path, start: int):
        board = _module("torch.utils.tensorboard", "tensorboard")
        self.writer = board.SummaryWriter(str(run_dir), purge_step=start + 1 if start else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def images(self, step: int, name: str, grid: np.ndarray) -> None:
        self.writer.add_image(name, grid, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict):
        self.wandb = _module("wandb", "wandb")
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = self.wandb.init(
            project="ndm", name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
            config=config,
        )  # fmt: skip

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def images(self, step: int, name: str, grid: np.ndarray) -> None:
        self.run.log({name: self.wandb.Image(grid)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    def __init__(self, run_dir: Path, config: dict):
        self.mlflow = _module("mlflow", "mlflow")
        kept = run_dir / MLFLOW_RUN_ID
        run_id = kept.read_text().strip() if kept.exists() else None
        run = self.mlflow.start_run(run_id=run_id, run_name=run_dir.name)
        if run_id is None:
            text = (run.info.run_id + "\n").encode()
            atomic_write(kept, lambda file: file.write(text))
            self.mlflow.log_dict(config, "config.json")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(values, step=step)

    def images(self, step: int, name: str, grid: np.ndarray) -> None:
        self.mlflow.log_image(grid, key=name, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def logger_names(spec: str) -> list[str]:
    """The loggers of a ``train.loggers`` value; ``ValueError`` for an unknown name."""
    if spec == "none":
        return []
    if spec == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown or not names:
        raise ValueError(
            f"unknown loggers {unknown or [spec]}; choose from {LOGGERS}, 'auto' or 'none'"
        )
    return names


def check_loggers(spec: str) -> None:
    """Raise ``ValueError`` unless every logger of ``spec`` is known and installed."""
    packages = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    for name in logger_names(spec):
        _module(packages[name], name)


def open_loggers(spec: str, run_dir: Path, config: dict, start: int = 0) -> list[RunLogger]:
    """The loggers of ``spec`` on the run folder ``run_dir``, continuing from ``start``."""
    makers = {
        "tensorboard": lambda: TensorBoardLogger(run_dir, start),
        "wandb": lambda: WandbLogger(run_dir, config),
        "mlflow": lambda: MlflowLogger(run_dir, config),
    }
    return [makers[name]() for name in logger_names(spec)]


def finite_scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    """``{prefix/name: value}`` of the finite numbers of ``values`` (flags and text left out)."""
    return {
        f"{prefix}/{name}": float(value)
        for name, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def uint8_grid(images: Tensor, columns: int = 8) -> np.ndarray:
    """Images ``[N, C, H, W]`` in ``[-1, 1]`` as one padded RGB ``uint8 [H', W', 3]`` grid."""
    grid = (image_grid(images, columns, pad=1) * 255).round().byte().numpy()
    return np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid
