"""Image datasets as integer pixel levels, and the maps from levels to model space.

Every dataset (:data:`IMAGE_DATASETS`) is read by :func:`load_image_dataset` into an
:class:`ImageData`: images ``uint8 [N, C, H, W]`` holding levels ``k in {0, ..., L - 1}``
with ``L = num_levels`` (256 for 8-bit data, 17 for ``digits``) and labels ``int64 [N]``.

* ``digits``: scikit-learn's 8x8 hand-written digits (shipped with the package), grey
  levels ``0..16`` kept as they are (``L = 17``); 1797 images, of which
  :data:`DIGITS_TEST_SIZE` drawn by a seeded permutation form the test split.
* ``mnist``, ``fashion_mnist``: the IDX files in a folder (Debian's
  ``dataset-fashion-mnist`` package installs them in ``/usr/share/datasets/fashion-mnist``).
* ``cifar10``: the python pickle batches (folder ``cifar-10-batches-py``).
* ``imagenet32``, ``imagenet64``: the downsampled-ImageNet npz batches.
* ``folder``: PNG/JPEG images (e.g. CelebA-HQ) center-cropped and resized to ``resolution``.

File datasets are read from a path the user gives and never downloaded; see
:mod:`ndm.data.formats` for the files each one needs.

The model sees levels at the bin centres (:func:`to_model_space`), uniformly dequantised for
continuous likelihoods (:func:`dequantise`), and randomly flipped in training for the
datasets of :func:`uses_flips` (:func:`random_horizontal_flip`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ndm.data.formats import (
    LazyPart,
    Split,
    image_folder_parts,
    imagenet_parts,
    read_cifar10,
    read_image_folder,
    read_imagenet,
    read_mnist,
)
from ndm.data.level_files import level_files

DIGITS_LEVELS = 17
EIGHT_BIT_LEVELS = 256
DIGITS_TEST_SIZE = 297

#: Readers of the datasets stored in files: ``reader(folder) -> Split``.
_FILE_READERS: dict[str, Callable[[Path], Split]] = {
    "mnist": read_mnist,
    "fashion_mnist": read_mnist,
    "cifar10": read_cifar10,
    "imagenet32": partial(read_imagenet, side=32),
    "imagenet64": partial(read_imagenet, side=64),
}
#: Names accepted by :func:`load_image_dataset`.
IMAGE_DATASETS: tuple[str, ...] = ("digits", *_FILE_READERS, "folder")
#: Readers of the datasets copied into a cache a part at a time: ``reader(folder,
#: resolution) -> (train parts, test parts)``; the others are read whole first.
_PART_READERS: dict[str, Callable[[Path, int | None], tuple[list[LazyPart], list[LazyPart]]]] = {
    "imagenet32": lambda folder, _: imagenet_parts(folder, 32),
    "imagenet64": lambda folder, _: imagenet_parts(folder, 64),
    "folder": image_folder_parts,
}
_FLIPPED = ("cifar10", "imagenet32", "imagenet64")
_FILES_NEEDED = {
    "mnist": "the MNIST IDX files (train-images-idx3-ubyte[.gz], ...)",
    "fashion_mnist": "the Fashion-MNIST IDX files (e.g. /usr/share/datasets/fashion-mnist)",
    "cifar10": "the CIFAR-10 python batches (cifar-10-batches-py)",
    "imagenet32": "the ImageNet 32x32 npz batches (train_data_batch_<k>.npz, val_data.npz)",
    "imagenet64": "the ImageNet 64x64 npz batches (train_data_batch_<k>.npz, val_data.npz)",
    "folder": "PNG/JPEG images",
}
_RESIZE_CHUNK = 1024


@dataclass(frozen=True)
class ImageData:
    """Train and test images of one dataset.

    ``train``/``test``: ``uint8 [N, C, H, W]`` levels in ``0..num_levels - 1``;
    ``train_labels``/``test_labels``: ``int64 [N]`` classes; ``name``: the dataset's name.
    """

    train: Tensor
    test: Tensor
    train_labels: Tensor
    test_labels: Tensor
    num_levels: int
    name: str


def uses_flips(name: str) -> bool:
    """Whether training on dataset ``name`` flips images horizontally at random."""
    return name in _FLIPPED


def digits_split(seed: int = 0) -> Split:
    """scikit-learn's digits as levels ``uint8 [N, 1, 8, 8]`` in ``0..16`` and labels ``[N]``.

    The first :data:`DIGITS_TEST_SIZE` indices of ``torch.randperm(1797)`` drawn from a
    generator seeded with ``seed`` form the test split, the other 1500 the train split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    levels = digits.images.astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return Split(levels[train], labels[train], levels[test], labels[test])


def _folder(name: str, path: str | Path | None) -> Path:
    """The existing folder ``path`` of file dataset ``name``."""
    if path is None or str(path) == "":
        raise ValueError(
            f"dataset {name!r} is read from files you already have (nothing is downloaded): "
            f"give the path of the folder holding {_FILES_NEEDED[name]}"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{folder}: {state}; dataset {name!r} needs a folder")
    return folder


def resize_levels(images: Tensor, resolution: int | None, num_levels: int) -> Tensor:
    """Levels ``uint8 [N, C, H, W]`` resized to ``[N, C, resolution, resolution]``
    (``resolution`` ``None``: returned unchanged).

    Antialiased bilinear interpolation of the levels as floats
    (``F.interpolate(..., antialias=True)``), rounded to the nearest level and clipped to
    ``0..num_levels - 1``. Images already of that size are returned unchanged.
    """
    if resolution is None or images.shape[-2:] == (resolution, resolution):
        return images
    chunks = [
        F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear", antialias=True)
        .round_()
        .clamp_(0, num_levels - 1)
        .to(torch.uint8)
        for chunk in images.split(_RESIZE_CHUNK)
    ]
    return torch.cat(chunks)


def _read_split(name: str, folder: Path, resolution: int | None) -> Split:
    """The whole split of file dataset ``name`` from ``folder``."""
    if name == "folder":
        return read_image_folder(folder, resolution)
    return _FILE_READERS[name](folder)


def _whole(split: Split) -> tuple[list[LazyPart], list[LazyPart]]:
    """``split`` as one train part and one test part."""
    return (
        [LazyPart(len(split.train), lambda: (split.train, split.train_labels))],
        [LazyPart(len(split.test), lambda: (split.test, split.test_labels))],
    )


def load_image_dataset(
    name: str,
    path: str | Path | None,
    resolution: int | None = None,
    seed: int = 0,
    cache: str | Path | None = None,
) -> ImageData:
    """Read image dataset ``name`` (one of :data:`IMAGE_DATASETS`).

    ``path``: the folder of its files (``None`` for ``digits``, which needs none);
    ``resolution``: side of the returned images (``None``: native size; ``folder`` needs
    one), other sizes made by :func:`resize_levels`; ``seed``: seed of the ``digits`` split;
    ``cache``: a folder where a file dataset is kept as memory-mapped level files
    (:mod:`ndm.data.level_files`; ImageNet is copied one npz batch at a time, a folder of
    images 4096 images at a time), so that the
    returned images are mapped from disk rather than held in memory (``None``: read whole).
    Raises ``ValueError`` for an unknown name or a missing path, ``FileNotFoundError`` for
    missing files and ``ValueError`` for malformed ones, naming the file.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {IMAGE_DATASETS}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be positive or None, got {resolution}")
    if name == "folder" and resolution is None:
        raise ValueError("dataset 'folder' needs a resolution to resize its images to")
    num_levels = DIGITS_LEVELS if name == "digits" else EIGHT_BIT_LEVELS
    resize = partial(resize_levels, resolution=resolution, num_levels=num_levels)
    if name == "digits":
        if path is not None and str(path) != "":
            raise ValueError(f"dataset 'digits' ships with scikit-learn; it takes no path: {path}")
        split = digits_split(seed)
    elif cache is not None and str(cache) != "":
        folder = _folder(name, path)
        reader = _PART_READERS.get(name) or (lambda f, r: _whole(_read_split(name, f, r)))
        train, train_labels, test, test_labels = level_files(
            name,
            folder,
            resolution,
            Path(cache).expanduser(),
            partial(reader, folder, resolution),
            resize,
        )
        return ImageData(train, test, train_labels, test_labels, num_levels, name)
    else:
        split = _read_split(name, _folder(name, path), resolution)
    train, test = (resize(torch.from_numpy(x)) for x in (split.train, split.test))
    return ImageData(
        train,
        test,
        torch.from_numpy(split.train_labels),
        torch.from_numpy(split.test_labels),
        num_levels,
        name,
    )


def to_model_space(levels: Tensor, num_levels: int) -> Tensor:
    """Levels ``k`` (any shape) at their bin centres in ``[-1, 1]``, float32.

    ``[-1, 1]`` is cut into ``L = num_levels`` bins of width ``2 / L``; level ``k`` maps to
    the centre of bin ``k``: ``x = (2 k + 1) / L - 1``.
    """
    return (2 * levels.to(torch.float32) + 1) / num_levels - 1


def _uniform(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``U[0, 1)`` float32 of ``shape`` drawn on ``generator``'s device, returned on ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def dequantise(levels: Tensor, num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Levels ``k`` (any shape) spread uniformly over their bins in ``[-1, 1]``, float32.

    ``x = 2 (k + u) / L - 1`` with ``u ~ U[0, 1)`` drawn independently for each element
    (``torch.rand(levels.shape, generator=generator)``), so ``x`` lies in bin ``k`` of
    :func:`to_model_space`: ``floor((x + 1) L / 2) = k``.
    """
    u = _uniform(levels.shape, generator, levels.device)
    return 2 * (levels.to(torch.float32) + u) / num_levels - 1


def random_horizontal_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x [B, C, H, W]`` with each example mirrored left-right with probability 1/2.

    Example ``b`` is flipped iff ``u_b < 1/2`` for ``u = torch.rand(B, generator=generator)``.
    """
    flip = _uniform(x.shape[:1], generator, x.device) < 0.5
    return torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)


def quantise(x: Tensor, num_levels: int) -> Tensor:
    """Model-space samples ``[B, C, H, W]`` to the bin centre of their level in ``[-1, 1]``."""
    levels = torch.floor((x.clamp(-1, 1) + 1) * num_levels / 2).clamp(0, num_levels - 1)
    return (2 * levels + 1) / num_levels - 1
