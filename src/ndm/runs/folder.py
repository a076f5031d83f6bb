"""The run folder on disk: the names of its files, and every read and write of them.

A run folder holds ``config.json`` (the resolved config, a record), ``metrics.jsonl`` (one
JSON object per logged step), ``checkpoint.pt`` (the resumable state, :mod:`ndm.runs.state`),
``metrics.json`` (the evaluation after training) and, for a run trained on given points,
``data.npz``. :func:`read_metrics` is the one reader of ``metrics.jsonl``;
:func:`read_run` / :func:`load_run` give the trained model of a checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ndm.data.atomic import TEMPORARY_SUFFIX, atomic_write
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.runs.builders import build_run_model
from ndm.runs.checkpoint import load_checkpoint, non_finite_tensors, save_json
from ndm.runs.config import MAX_CONFIG_BYTES, RunConfig, config_from_record, config_to_dict
from ndm.runs.distributed import resolve_device

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
METRICS_SUMMARY = "metrics.json"
DATA = "data.npz"
EVALUATIONS = "evals"  # one JSON record per `ndm eval`, named by its time
#: Every file of a run folder that a run needs: nothing else may be written over them.
RUN_FILES = (CHECKPOINT, CONFIG, METRICS, METRICS_SUMMARY, DATA)
#: Keys every checkpoint holds.
RUN_KEYS = ("config", "step", "model", "ema", "shape", "num_levels")
MODEL_KINDS = ("pixel", "latent")


def ema_of(model: NDM | LatentNDM, decay: float) -> AveragedModel:
    """The exponential moving average of ``model``'s weights, ``w <- decay w + (1 - decay) w'``."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def saved_config(state: dict[str, Any]) -> RunConfig:
    """The config of a checkpoint (settings an earlier version did not store: as it ran)."""
    return config_from_record(state["config"])


def check_new_run_folder(run_dir: Path) -> None:
    """A new run starts in a folder that does not exist, is empty, or is an ndm run that has
    not reached its first checkpoint (its ``config.json`` a run's record); anything else
    (a user's folder, a file) raises ``ValueError`` naming what it holds, and nothing in it
    is touched."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} is a file, not a folder")
    entries = sorted(p.name for p in run_dir.iterdir() if not p.name.endswith(TEMPORARY_SUFFIX))
    if not entries or _is_run_record(run_dir / CONFIG):
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise ValueError(
        f"{run_dir} is not empty and is not an ndm run folder (it holds {shown}); a new run "
        "needs a new or empty folder: choose another --run-dir"
    )


def _is_run_record(path: Path) -> bool:
    """Whether ``path`` is the ``config.json`` an ndm run writes."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_CONFIG_BYTES:
        return False
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"data", "model", "train"} <= record.keys():
            return False
        config_from_record(record)
    except (ValueError, TypeError, UnicodeDecodeError):
        return False
    return True


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """Record the resolved config in ``run_dir/config.json``."""
    save_json(run_dir / CONFIG, config_to_dict(cfg))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` file as dicts, in order; a last line cut short by a
    kill during its write is left out. Any other line that is not a JSON object with an
    integer ``step`` raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    logged = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the write of the last line was interrupted
                continue
            raise ValueError(f"{path}, line {number}: not a JSON metrics line ({error})") from error
        if not isinstance(value, dict) or not isinstance(value.get("step"), int):
            raise ValueError(f"{path}, line {number}: a metrics line needs an integer 'step'")
        logged.append(value)
    return logged


def keep_metrics_until(run_dir: Path, step: int) -> None:
    """Drop the metric lines of ``run_dir`` logged after ``step`` (by a run stopped after its
    last checkpoint), and a last line cut short (:func:`read_metrics`)."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = [json.dumps(line) for line in read_metrics(path) if line["step"] <= step]
    atomic_write(path, lambda file: file.write("".join(f"{k}\n" for k in kept).encode()))


def append_metrics(run_dir: Path, line: dict[str, Any]) -> None:
    """Add one line to ``run_dir/metrics.jsonl``."""
    with (run_dir / METRICS).open("a") as file:
        file.write(json.dumps(line) + "\n")


def save_evaluation(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Keep the record of one evaluation as ``run_dir/evals/<time>.json`` (``<time>-<k>``
    when that name is taken); return its path."""
    folder = run_dir / EVALUATIONS
    folder.mkdir(exist_ok=True)
    stem, k = time.strftime("%Y%m%d-%H%M%S"), 1
    path = folder / f"{stem}.json"
    while path.exists():
        path, k = folder / f"{stem}-{k}.json", k + 1
    save_json(path, metrics)
    return path


def checkpoint_in(run_dir: str | Path) -> Path:
    """``run_dir/checkpoint.pt``; ``FileNotFoundError`` if the run folder does not exist,
    ``NotADirectoryError`` if it is a file."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    return run_dir / CHECKPOINT


def _kind(latent: bool) -> str:
    return "latent" if latent else "pixel"


@dataclass(frozen=True)
class TrainedRun:
    """What a run folder's checkpoint holds for using the model: its ``config``, the
    ``model`` with the EMA weights, the ``step`` it was written at, the example ``shape``,
    the ``num_levels`` of image data (``None`` for points) and the ``data_digest`` of its
    data (:func:`ndm.runs.inputs.data_digest`; ``None`` for toy data and older runs)."""

    config: RunConfig
    model: NDM | LatentNDM
    step: int
    shape: tuple[int, ...]
    num_levels: int | None
    data_digest: str | None = None


def _check_kind(state: dict[str, Any], cfg: RunConfig, kind: str | None) -> None:
    """The checkpoint's model must be of ``kind`` (when given), its weights of the kind its
    config describes, and finite."""
    described = _kind(cfg.latent.enabled)
    if kind is not None and kind != described:
        raise ValueError(f"it holds a {described} NDM, not a {kind} NDM")
    stored = _kind(any(key.startswith("module.autoencoder.") for key in state["ema"]))
    if stored != described:
        raise ValueError(
            f"its config describes a {described} NDM but its weights are those of a {stored} NDM"
        )
    bad = non_finite_tensors(state["ema"])
    if bad:
        raise ValueError(f"non-finite weights in {len(bad)} tensors ({bad[0][1:]}, ...)")


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
    path = checkpoint_in(run_dir)
    state = load_checkpoint(path, RUN_KEYS)
    try:
        cfg = saved_config(state)
        _check_kind(state, cfg, kind)
        shape = tuple(state["shape"])
        ema = ema_of(build_run_model(cfg, shape, state["num_levels"]), cfg.train.ema_decay)
        ema.load_state_dict(state["ema"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a usable ndm run: {error}") from error
    model = ema.module.to(resolve_device(str(device)))
    digest = state.get("data_digest")
    return TrainedRun(cfg, model, state["step"], shape, state["num_levels"], digest)


def load_run(
    run_dir: str | Path, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[RunConfig, NDM | LatentNDM]:
    """``(config, model with the EMA weights on device)`` of the run in ``run_dir``; see
    :func:`read_run`."""
    run = read_run(run_dir, kind, device)
    return run.config, run.model


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config saved in the checkpoint of ``run_dir``."""
    path = checkpoint_in(run_dir)
    state = load_checkpoint(path)
    try:
        return saved_config(state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
