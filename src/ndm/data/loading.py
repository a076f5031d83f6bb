"""One entry point for every dataset a run can use: toy 2-D data or images.

Toy data and the points of a file are float ``[N, D]`` points used as they are. Images are integer levels
``[N, C, H, W]`` with ``L`` levels. The model is a density of uniformly dequantised images
``x = 2 (k + u) / L - 1`` in ``[-1, 1]`` (:func:`ndm.data.images.dequantise`): it trains on
them with fresh noise ``u`` at every step (and random horizontal flips for datasets that use
them), and its NLL and NELBO are scored on them, so that both bound the same discrete
likelihood (:func:`ndm.losses.likelihood.dequantisation_offset`). Plots and FID see the bin centres
``x = (2 k + 1) / L - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ndm.data.host_memory import require_memory
from ndm.data.images import (
    IMAGE_DATASETS,
    dequantise,
    load_image_dataset,
    random_horizontal_flip,
    to_model_space,
    uses_flips,
)
from ndm.data.points import POINTS_DATASET, read_points
from ndm.data.toy2d import DATASETS as TOY_DATASETS
from ndm.data.toy2d import entropy, toy2d_splits

ALL_DATASETS = (*TOY_DATASETS, POINTS_DATASET, *IMAGE_DATASETS)


@dataclass(frozen=True)
class Splits:
    """Train and test data of a run.

    ``train``/``test``: float points ``[N, D]`` (``num_levels is None``) or integer levels
    ``[N, C, H, W]``; ``labels`` of the train and test images (``None`` for toy data);
    ``entropy``: the data's exact entropy in nats when known.
    """

    train: Tensor
    test: Tensor
    num_levels: int | None
    flips: bool
    entropy: float | None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, ``(D,)`` or ``(C, H, W)``."""
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.num_levels is not None

    def require_test_examples(self) -> None:
        """Raise ``ValueError`` if the test split is empty: NLL, NELBO and FID need it."""
        if self.test.shape[0] == 0:
            raise ValueError("the test split holds no examples: NLL, NELBO and FID need some")


def is_image_dataset(name: str) -> bool:
    return name in IMAGE_DATASETS


def load_splits(
    dataset: str,
    n_train: int,
    n_test: int,
    seed: int,
    path: str = "",
    resolution: int = 0,
    cache: str = "",
) -> Splits:
    """Toy data drawn from seeds ``2 seed`` / ``2 seed + 1`` (``n_train``/``n_test`` points),
    the points of the file ``path`` (:mod:`ndm.data.points`), or an image dataset read from
    ``path`` (``resolution`` 0: native size; else resized), memory-mapped from its copy in
    the folder ``cache`` when one is given (:mod:`ndm.data.level_files`)."""
    if dataset in TOY_DATASETS:
        # float32 points [N, 2] and the draw's temporaries, about as many again
        require_memory(f"{n_train} + {n_test} toy points", (n_train + n_test) * 2 * 4 * 2)
        train, test = toy2d_splits(dataset, n_train, n_test, seed)
        return Splits(train, test, None, False, entropy(dataset))
    if dataset == POINTS_DATASET:
        if not path:
            raise ValueError("the points dataset needs the path of its .npz file")
        train, test = read_points(path)
        return Splits(train, test, None, False, None)
    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {ALL_DATASETS}")
    data = load_image_dataset(dataset, path or None, resolution or None, cache=cache or None)
    return Splits(
        data.train,
        data.test,
        data.num_levels,
        uses_flips(dataset),
        None,
        data.train_labels,
        data.test_labels,
    )


def model_input(
    batch: Tensor, splits: Splits, generator: torch.Generator | None, augment: bool
) -> Tensor:
    """What the model sees: toy points as float32; images in ``[-1, 1]``, with ``augment``
    (training) uniformly dequantised with noise from ``generator`` and then flipped at random
    if the dataset uses flips, else at their bin centres."""
    if not splits.is_image:
        return batch.float()
    if not augment:
        return to_model_space(batch, splits.num_levels)
    x = dequantise(batch, splits.num_levels, generator)
    if splits.flips:
        x = random_horizontal_flip(x, generator)
    return x
