"""What may resume a run: the checkpoint must match the data, model and optimisation
settings it was trained with, and its ``config.json`` must still record them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ndm.runs.checkpoint import load_checkpoint
from ndm.runs.config import (
    NO_BUDGET,
    RunConfig,
    config_from_record,
    config_to_dict,
    with_resolved_paths,
)
from ndm.runs.folder import CHECKPOINT, CONFIG, RUN_KEYS, check_new_run_folder, saved_config

RUN_SECTIONS = ("data", "model", "latent", "train")
#: What a resumed run may change: how long it runs, how often and where it logs and saves,
#: where its image cache lives, what it checkpoints (the gradients stay the same), and
#: (outside :data:`RUN_SECTIONS`) every evaluation setting.
RESUMABLE_SETTINGS = (
    "data.cache",
    "train.steps",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.loggers",
    "train.checkpointing",
)


def fixed_settings_changed(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``section.name`` of each setting a resumed run may not change (all of
    :data:`RUN_SECTIONS` but :data:`RESUMABLE_SETTINGS`) whose value differs between the
    config dicts."""
    return [
        f"{section}.{name}"
        for section in RUN_SECTIONS
        for name, value in wanted[section].items()
        if f"{section}.{name}" not in RESUMABLE_SETTINGS and saved[section].get(name) != value
    ]


def check_resumable(
    state: dict[str, Any], cfg: RunConfig, shape: tuple[int, ...], path: Path,
    digest: str | None = None,
) -> None:  # fmt: skip
    """The checkpoint must have been trained with the data, model and optimisation settings
    of ``cfg`` (paths resolved) and stop before its end."""
    saved = config_to_dict(with_resolved_paths(saved_config(state)))
    changed = fixed_settings_changed(saved, config_to_dict(cfg))
    if changed:
        raise ValueError(
            f"cannot resume {path}: the config changes {changed}; a resumed run keeps the "
            f"settings it was trained with (it may change only {list(RESUMABLE_SETTINGS)} "
            "and the evaluation settings)"
        )
    if tuple(state["shape"]) != shape:
        raise ValueError(
            f"cannot resume {path}: it was trained on examples of shape {tuple(state['shape'])},"
            f" not {shape}"
        )
    if state.get("data_digest") not in (None, digest):
        raise ValueError(
            f"cannot resume {path}: the data at {cfg.data.path or cfg.data.dataset} is not the "
            "data it was trained on (its digest differs)"
        )
    if state["step"] >= cfg.train.steps:
        raise ValueError(
            f"cannot resume {path}: the run already reached step {state['step']} "
            f"(steps = {cfg.train.steps}); ask for more steps to continue it"
        )


def check_record(path: Path, state: dict[str, Any]) -> None:
    """``config.json`` of a run being resumed is a record of its checkpoint's config: raise
    ``ValueError`` if it was edited (a resumed segment may differ only in
    :data:`RESUMABLE_SETTINGS`)."""
    if not path.exists():
        return
    try:
        recorded = config_to_dict(config_from_record(json.loads(path.read_text())))
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not the config of this run ({error})") from error
    changed = fixed_settings_changed(config_to_dict(saved_config(state)), recorded)
    if changed:
        raise ValueError(
            f"{path} differs from the config its checkpoint was trained with in {changed}; "
            "it is a record, not an input: restore it, and give changes as options of the resume"
        )


def with_chosen_micro_batches(cfg: RunConfig, saved: RunConfig) -> RunConfig:
    """``cfg`` with the ``grad_accum`` its memory budget chose when the run began
    (:mod:`ndm.runs.memory`): a resume under the same budget keeps that split, on which
    each micro-batch's noise depends."""
    budget = cfg.train.memory_budget
    if budget == NO_BUDGET or budget != saved.train.memory_budget or cfg.train.grad_accum != 1:
        return cfg
    return replace(cfg, train=replace(cfg.train, grad_accum=saved.train.grad_accum))


def checkpoint_to_resume(
    run_dir: Path, cfg: RunConfig, shape: tuple[int, ...], resume: bool, digest: str | None = None
) -> tuple[dict[str, Any] | None, RunConfig]:
    """The checkpoint of ``run_dir`` to continue (``resume``), checked against ``cfg`` and
    the run's ``config.json``, and ``cfg`` with the micro-batches its budget chose
    (:func:`with_chosen_micro_batches`); ``digest``: that of the run's data
    (:func:`ndm.runs.inputs.data_digest`), which must be that it began on. ``None`` for
    a new run, which refuses a folder that already holds a checkpoint."""
    path = run_dir / CHECKPOINT
    if not resume:
        if path.exists():
            raise FileExistsError(
                f"{run_dir} already holds a checkpoint; resume it or choose another run folder"
            )
        check_new_run_folder(run_dir)
        return None, cfg
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
    state = load_checkpoint(path, RUN_KEYS)
    cfg = with_chosen_micro_batches(cfg, saved_config(state))
    check_resumable(state, cfg, shape, path, digest)
    check_record(run_dir / CONFIG, state)
    return state, cfg
