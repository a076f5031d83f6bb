"""Image datasets kept as memory-mapped level files, for data larger than host memory.

Given a cache folder (``DataConfig.cache``), an image dataset is copied once, one source
file at a time, into ``<cache>/<name>-<side>-<key>/`` as ``.npy`` arrays:
``{train,test}_images.npy`` (``uint8 [N, C, H, W]`` levels, already resized) and
``{train,test}_labels.npy`` (``int64 [N]``). Later reads memory-map the images: the training
loop gathers each micro-batch from the mapping (:mod:`ndm.runs.training`), so only the pages of
the drawn rows are read and the host never holds the whole set in its own memory.

``key`` hashes the dataset's name, the resolution and the relative path, size and
modification time of every source file, so a changed source gets a new copy. A copy is
built in a temporary folder and renamed into place once complete, so an interrupted copy
is never used; a file lock (POSIX) makes the processes of one machine wait for a single copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ndm.data.formats import LazyPart

#: Bumped whenever the layout of a copy changes, so that old copies are not read.
LAYOUT_VERSION = 2  # 2: greyscale folders copied as one channel
SPLITS = ("train", "test")


def source_key(name: str, source: Path, resolution: int | None) -> str:
    """16 hex digits of the SHA-256 of ``name``, ``resolution``, :data:`LAYOUT_VERSION` and
    the relative path, size and ``st_mtime_ns`` of every file under ``source``."""
    digest = hashlib.sha256(f"{name}\n{resolution}\n{LAYOUT_VERSION}\n".encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(source)}\n{stat.st_size}\n{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def memory_mapped(path: Path) -> Tensor:
    """The ``.npy`` array ``path`` as a read-only memory-mapped tensor (nothing unpickled)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    with warnings.catch_warnings():  # read-only by design: nothing writes the data in place
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _write_images(path: Path, parts: list[LazyPart], resize: Callable[[Tensor], Tensor]) -> None:
    """``path``: the images of ``parts`` concatenated, resized part by part, written into a
    ``.npy`` file mapped for writing, so that one part at a time is in memory; the labels
    go to the ``labels`` file beside it."""
    labels, out, row = [], None, 0
    total = sum(part.count for part in parts)
    for part in parts:
        images, part_labels = part.read()
        if len(images) != part.count or len(part_labels) != part.count:
            raise ValueError(f"a part of {path.name} changed while it was copied")
        images = resize(torch.from_numpy(images)).numpy()
        if out is None:
            out = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.uint8, shape=(total, *images.shape[1:])
            )
        out[row : row + part.count] = images
        labels.append(part_labels)
        row += part.count
    if out is None:  # no parts: an empty split
        raise ValueError(f"no images to write to {path}")
    out.flush()
    del out
    np.save(path.with_name(path.name.replace("images", "labels")), np.concatenate(labels))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if absent); where ``fcntl`` is
    missing (Windows), no lock: the rename still keeps a copy whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def level_files(
    name: str,
    source: Path,
    resolution: int | None,
    cache: Path,
    parts: Callable[[], tuple[list[LazyPart], list[LazyPart]]],
    resize: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train, train_labels, test, test_labels)`` of dataset ``name`` read from the folder
    ``source``, images memory-mapped from their copy in ``cache`` (made first if absent from
    ``parts() -> (train parts, test parts)``, each part's images passed through ``resize``).

    Raises ``ValueError`` naming the file if a copy is corrupt.
    """
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / f"{name}-{resolution or 'native'}-{source_key(name, source, resolution)}"
    with _locked(cache / f"{folder.name}.lock"):
        if not folder.is_dir():
            building = cache / f"{folder.name}.building-{os.getpid()}"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            try:
                for split, split_parts in zip(SPLITS, parts(), strict=True):
                    _write_images(building / f"{split}_images.npy", split_parts, resize)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
            os.replace(building, folder)
    arrays = []
    for split in SPLITS:
        images_path, labels_path = (folder / f"{split}_{kind}.npy" for kind in ("images", "labels"))
        try:
            images = memory_mapped(images_path)
            labels = torch.from_numpy(np.load(labels_path, allow_pickle=False))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{folder}: corrupt copy of dataset {name!r} ({error}); delete the folder to "
                "copy the dataset again"
            ) from error
        if images.dim() != 4 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{folder}: corrupt copy of dataset {name!r}: {split} images "
                f"{images.dtype} {list(images.shape)} with labels {list(labels.shape)}; delete "
                "the folder to copy the dataset again"
            )
        arrays += [images, labels.long()]
    return tuple(arrays)
