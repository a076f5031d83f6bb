"""Atomic file writes and checkpoints.

A checkpoint is a dict of tensors, state dicts and plain values (the config as a dict,
never pickled classes), written with ``torch.save`` and read with ``weights_only=True``.
One with a non-finite floating-point tensor is never written, and every file is written
through :func:`ndm.data.atomic.atomic_write`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ndm.data.atomic import atomic_write

REQUIRED_KEYS = ("config", "step", "model")


def _finite_or_null(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf: not JSON) replaced by ``None``."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(value) for value in data]
    return data


def save_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented, strict JSON (NaN and inf become ``null``)."""
    text = json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in the nested dicts and lists of
    ``state`` that hold a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix] if bad else []
    if isinstance(state, dict):
        items = list(state.items())
    elif isinstance(state, (list, tuple)):
        items = list(enumerate(state))
    else:
        return []
    return [name for key, value in items for name in non_finite_tensors(value, f"{prefix}.{key}")]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` the checkpoint dict ``state`` to ``path``; raise
    ``FloatingPointError`` and write nothing when a tensor in it is not finite."""
    bad = non_finite_tensors(state)
    if bad:
        raise FloatingPointError(
            f"refused to write {path}: non-finite values in {len(bad)} tensors ({bad[0][1:]}, ...)"
        )
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path, required: Iterable[str] = REQUIRED_KEYS) -> dict[str, Any]:
    """Load a checkpoint onto the CPU.

    Raises ``FileNotFoundError`` naming ``path`` when it is missing, and ``ValueError``
    naming it when it cannot be read, lacks one of the ``required`` keys or has a ``step``
    that is not a non-negative integer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # warnings about an unreadable file are dropped with it
        reason = str(error).strip().split("\n")[0][:200]
        if "weights_only" in reason:  # torch's advice to unpickle is no advice for ndm
            reason = "it is not a tensor archive ndm can read without running code"
        raise ValueError(
            f"{path} is corrupt or not an ndm checkpoint ({type(error).__name__}: {reason})"
        ) from error
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path} is corrupt or not an ndm checkpoint (missing keys {missing})")
    step = state.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{path} is corrupt: its step is {step!r}, not a count of steps")
    return state
