"""Atomic file writes and checkpoints.

A checkpoint is a dict of tensors, state dicts and plain values (the config as a dict,
never pickled classes), written with ``torch.save`` and read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

REQUIRED_KEYS = ("config", "step", "model")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(file)`` into a temporary file in the same folder,
    flush and fsync it, then ``os.replace`` it onto ``path``: readers see either the old
    or the new file, never a partial one, and no temporary file is left behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` the checkpoint dict ``state`` to ``path``."""
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path, required: Iterable[str] = REQUIRED_KEYS) -> dict[str, Any]:
    """Load a checkpoint onto the CPU.

    Raises ``FileNotFoundError`` naming ``path`` when it is missing, and ``ValueError``
    naming it when it cannot be read or lacks one of the ``required`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # warnings about an unreadable file are dropped with it
        reason = str(error).strip().split("\n")[0][:200]
        raise ValueError(
            f"{path} is corrupt or not an ndm checkpoint ({type(error).__name__}: {reason})"
        ) from error
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path} is corrupt or not an ndm checkpoint (missing keys {missing})")
    return state
