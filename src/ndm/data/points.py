"""Points from a file: the ``points`` dataset, and the data a run trained on was given.

A points file is an ``.npz`` archive of arrays only (read without unpickling) holding
``train``: float ``[N, D]`` and, optionally, ``test``: float ``[M, D]`` (absent: no test
points). :func:`ndm.runs.training.train` writes the points it is handed in this format into the
run folder, so that the run can be resumed, sampled and evaluated on what it trained on.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ndm.data.formats import read_npz_arrays

POINTS_DATASET = "points"


def save_points(file: io.BufferedIOBase, train: Tensor, test: Tensor) -> None:
    """Write ``train [N, D]`` and ``test [M, D]`` as float32 arrays of an ``.npz`` archive."""
    arrays = {
        name: x.detach().cpu().float().numpy() for name, x in (("train", train), ("test", test))
    }
    np.savez(file, **arrays)


def read_points(path: str | Path) -> tuple[Tensor, Tensor]:
    """``(train [N, D], test [M, D])`` float32 tensors of the points file ``path``."""
    path = Path(path)
    arrays = read_npz_arrays(path, ("train",), "points file")
    train = arrays["train"]
    test = arrays.get("test", train[:0])
    for name, x in (("train", train), ("test", test)):
        if x.ndim != 2:
            raise ValueError(
                f"points file {path}: {name!r} must be a 2-D array of points [N, D], got shape "
                f"{list(x.shape)}"
            )
        if x.shape[1] != train.shape[1] or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(
                f"points file {path}: {name!r} must be float [N, {train.shape[-1]}], "
                f"got {x.dtype} {list(x.shape)}"
            )
    return torch.from_numpy(train).float(), torch.from_numpy(test).float()
