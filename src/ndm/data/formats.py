"""Readers of image datasets in the file formats they are distributed in.

Nothing is downloaded: every reader takes a folder the user already has. Each returns a
:class:`Split` of numpy arrays: images ``uint8 [N, C, H, W]`` (channel-major, 8-bit levels
``0..255``) and labels ``int64 [N]``.

* MNIST / Fashion-MNIST (:func:`read_mnist`): the four IDX files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, gzipped (``.gz``) or raw.
* CIFAR-10 (:func:`read_cifar10`): the python pickle batches ``data_batch_1..5`` and
  ``test_batch``, read by an unpickler that builds numpy arrays and containers only, so a
  hostile file cannot run code.
* Downsampled ImageNet (:func:`read_imagenet`): ``train_data_batch_<k>.npz`` and
  ``val_data.npz``, labels stored 1-based and returned 0-based.
* A folder of PNG/JPEG images (:func:`read_image_folder`), center-cropped and resized;
  16-bit greyscale images are scaled to 8 bits.
"""

from __future__ import annotations

import gzip
import math
import pickle
import re
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageOps

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_SUBFOLDER = "cifar-10-batches-py"
CIFAR_SIDE = 32
CIFAR_CLASSES = 10
IMAGENET_CLASSES = 1000
#: Pillow modes of greyscale images with more than 8 bits per pixel.
WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
GREY_MODES = ("1", "L", *WIDE_GREY_MODES)
IMAGENET_TEST_FILE = "val_data.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Every ``FOLDER_TEST_EVERY``-th image of a folder (sorted positions 0, 10, 20, ...) is a test
#: image.
FOLDER_TEST_EVERY = 10

_GZIP_MAGIC = b"\x1f\x8b"
#: The most an IDX payload may outgrow its gzipped file (images compress 2 to 5 times).
MAX_GZIP_RATIO = 100
_IDX_KINDS = {IDX_IMAGES_MAGIC: "uint8 images", IDX_LABELS_MAGIC: "uint8 labels"}


class Split(NamedTuple):
    """Train and test images ``uint8 [N, C, H, W]`` with their labels ``int64 [N]``."""

    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


def find_idx_file(directory: Path, name: str) -> Path:
    """``directory/name`` or ``directory/name.gz``, whichever exists (the raw file first)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory / name}: IDX file not found (nor {name}.gz)")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file whose header must carry ``magic``.

    An IDX file is a big-endian uint32 magic ``0x000008<ndim>`` (``0x08``: uint8 data), then
    ``ndim`` big-endian uint32 dimensions, then ``prod(dims)`` bytes in C order. Returns the
    array of shape ``dims``. A gzipped file is decompressed as it is read: the header is
    checked first, and a payload larger than the header says, or than
    :data:`MAX_GZIP_RATIO` times the compressed file, is refused before it is held.
    """
    kind = _IDX_KINDS[magic]
    with path.open("rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as file:
            return _read_idx_stream(file, path, magic, kind, gzipped)
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: corrupt gzip data ({error})") from error


def _read_idx_stream(
    file: BinaryIO, path: Path, magic: int, kind: str, gzipped: bool
) -> np.ndarray:
    found_bytes = file.read(4)
    found = int.from_bytes(found_bytes, "big") if len(found_bytes) == 4 else None
    if found != magic:
        got = "a file shorter than 4 bytes" if found is None else f"0x{found:08x}"
        raise ValueError(f"{path}: expected IDX magic 0x{magic:08x} ({kind}), got {got}")
    ndim = magic & 0xFF
    header = file.read(4 * ndim)
    if len(header) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header, expected {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", header)
    expected = math.prod(dims)
    if gzipped and expected > MAX_GZIP_RATIO * path.stat().st_size + (1 << 20):
        raise ValueError(
            f"{path}: its header claims {expected} bytes of {kind} for shape {list(dims)}, "
            f"more than {MAX_GZIP_RATIO} times the gzipped file"
        )
    data = file.read(expected)
    extra = len(file.read(1))
    if len(data) != expected or extra:
        found_size = "more" if extra else str(len(data))
        raise ValueError(
            f"{path}: expected {expected} bytes of {kind} for shape {list(dims)}, "
            f"found {found_size}"
        )
    return np.frombuffer(data, np.uint8).reshape(dims).copy()


def _read_mnist_part(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 1, H, W]`` and labels ``[N]`` of ``part`` (``train`` or ``t10k``)."""
    images_path = find_idx_file(directory, f"{part}-images-idx3-ubyte")
    labels_path = find_idx_file(directory, f"{part}-labels-idx1-ubyte")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels for the {images.shape[0]} images "
            f"of {images_path}"
        )
    return images[:, None], labels.astype(np.int64)


def read_mnist(directory: Path) -> Split:
    """MNIST or Fashion-MNIST from the four IDX files in ``directory`` (gzipped or raw).

    Returns 60000 train and 10000 test images ``[N, 1, 28, 28]`` for the full datasets.
    """
    return Split(*_read_mnist_part(directory, "train"), *_read_mnist_part(directory, "t10k"))


# What CIFAR-10 batches reference besides dicts, lists, ints and bytes: numpy arrays, and the
# encoder of bytes in protocol-2 pickles written by python 3.
_CIFAR_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds containers and numpy arrays only: any other global a pickle
    names (a function to call, a class to build) is refused, so reading runs no code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """The dict pickled in ``path``, keys as bytes (python-2 strings are read as bytes),
    read by :class:`_ArrayUnpickler`, which executes nothing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CIFAR-10 batch not found")
    try:
        with path.open("rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except Exception as error:
        raise ValueError(f"{path}: not a CIFAR-10 python pickle batch ({error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    return {key.encode() if isinstance(key, str) else key: value for key, value in batch.items()}


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]`` of one CIFAR-10 batch.

    The batch holds ``b"data"``: uint8 ``[N, 3072]``, each row the red, green and blue
    32x32 planes in turn (row-major), so value ``c * 1024 + 32 i + j`` is pixel ``(c, i, j)``;
    and ``b"labels"``: ``N`` integers ``0..9``.
    """
    batch = _unpickle(path)
    for key in (b"data", b"labels"):
        if key not in batch:
            raise ValueError(f"CIFAR-10 batch {path} lacks key {key!r}")
    data = np.asarray(batch[b"data"])
    size = 3 * CIFAR_SIDE * CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise ValueError(
            f"CIFAR-10 batch {path}: expected b'data' uint8 [N, {size}], "
            f"got {data.dtype} {list(data.shape)}"
        )
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if labels.shape != data.shape[:1]:
        raise ValueError(
            f"CIFAR-10 batch {path}: expected {data.shape[0]} labels, got {list(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR_CLASSES):
        raise ValueError(
            f"CIFAR-10 batch {path}: labels must lie in 0..{CIFAR_CLASSES - 1}, "
            f"got {labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels


def read_cifar10(directory: Path) -> Split:
    """CIFAR-10 from ``directory`` (the ``cifar-10-batches-py`` folder or its parent).

    Train: ``data_batch_1..5`` concatenated (50000 images); test: ``test_batch`` (10000).
    """
    if (directory / CIFAR_SUBFOLDER).is_dir():
        directory = directory / CIFAR_SUBFOLDER
    train = [read_cifar_batch(directory / name) for name in CIFAR_TRAIN_BATCHES]
    test, test_labels = read_cifar_batch(directory / CIFAR_TEST_BATCH)
    return Split(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test,
        test_labels,
    )


def read_npz_arrays(
    path: Path, required: tuple[str, ...], what: str, only: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` archive ``path`` (those named in ``only`` if given, else all),
    read without unpickling; ``what`` names the file in errors: missing
    (``FileNotFoundError``), not an archive, lacking one of the ``required`` arrays, or
    holding pickled objects (``ValueError``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(
                "it is a single array (.npy), not an .npz archive of named arrays (np.savez)"
            )
        with loaded as npz:
            missing = [key for key in required if key not in npz.files]
            if missing:
                raise ValueError(f"lacks array {missing[0]!r}, has {npz.files}")
            return {key: npz[key] for key in npz.files if only is None or key in only}
    except Exception as error:
        reason = str(error)
        if "allow_pickle" in reason:  # numpy's advice to unpickle is no advice here
            reason = "it holds pickled Python objects, not arrays"
        raise ValueError(f"{what} {path}: {reason}") from error


def read_imagenet_npz(path: Path, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 3, side, side]`` and 0-based labels ``int64 [N]`` of one npz batch.

    The batch holds ``data``: uint8 ``[N, 3 S S]`` (channel-major planes, like CIFAR-10),
    with ``S`` inferred from the row length and required to equal ``side``, and ``labels``:
    ``N`` classes ``1..1000``, returned minus one.
    """
    arrays = read_npz_arrays(path, ("data", "labels"), "ImageNet npz batch")
    data, labels = arrays["data"], arrays["labels"].astype(np.int64)
    values = data.shape[1] if data.ndim == 2 else 0
    found = math.isqrt(values // 3)
    if data.dtype != np.uint8 or values == 0 or 3 * found * found != values:
        raise ValueError(
            f"ImageNet npz {path}: expected data uint8 [N, 3 S S], "
            f"got {data.dtype} {list(data.shape)}"
        )
    if found != side:
        raise ValueError(
            f"ImageNet npz {path} has {values} values per image, which is {found}x{found}, "
            f"but resolution {side} was requested"
        )
    if labels.shape != data.shape[:1] or (
        labels.size and (labels.min() < 1 or labels.max() > IMAGENET_CLASSES)
    ):
        raise ValueError(
            f"ImageNet npz {path}: expected {data.shape[0]} labels in 1..{IMAGENET_CLASSES}"
        )
    return data.reshape(-1, 3, side, side), labels - 1


def _imagenet_train_files(directory: Path) -> list[Path]:
    """Every ``train_data_batch_<k>.npz`` in ``directory``, in increasing ``k``."""
    pattern = re.compile(r"train_data_batch_(\d+)\.npz")
    found = {}
    for path in directory.iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise FileNotFoundError(f"{directory / 'train_data_batch_1.npz'}: no ImageNet train batch")
    return [found[k] for k in sorted(found)]


class LazyPart(NamedTuple):
    """``count`` images of a dataset file, read by ``read() -> (images uint8 [count, C, H,
    W], labels int64 [count])`` only when called, so that a dataset larger than memory can be
    copied one file at a time."""

    count: int
    read: Callable[[], tuple[np.ndarray, np.ndarray]]


def _imagenet_part(path: Path, side: int) -> LazyPart:
    """One npz batch, its labels read now (to count them) and its images when asked."""
    labels = read_npz_arrays(path, ("data", "labels"), "ImageNet npz batch", only=("labels",))
    return LazyPart(len(labels["labels"]), partial(read_imagenet_npz, path, side))


def imagenet_parts(directory: Path, side: int) -> tuple[list[LazyPart], list[LazyPart]]:
    """Train and test parts of :func:`read_imagenet`, one per npz batch."""
    train = [_imagenet_part(path, side) for path in _imagenet_train_files(directory)]
    return train, [_imagenet_part(directory / IMAGENET_TEST_FILE, side)]


def read_imagenet(directory: Path, side: int) -> Split:
    """Downsampled ImageNet ``side x side`` from the npz batches in ``directory``.

    Train: every ``train_data_batch_<k>.npz`` present (``k = 1..10`` for the full set),
    concatenated in increasing ``k``; test: ``val_data.npz``.
    """
    train_parts, (test_part,) = imagenet_parts(directory, side)
    train = [part.read() for part in train_parts]
    return Split(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        *test_part.read(),
    )


def image_files(directory: Path) -> list[Path]:
    """PNG/JPEG files under ``directory`` (any depth), sorted by their relative path."""
    files = [
        path
        for path in directory.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    return sorted(files, key=lambda path: path.relative_to(directory).as_posix())


def _grey_8_bit(image: Image.Image, path: Path) -> Image.Image:
    """A 16-bit greyscale image (values ``0..65535``) as 8-bit levels ``round(v / 257)``
    (Pillow's own conversion clips every value above 255 to white)."""
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"values {values.min()}..{values.max()} are not 16-bit levels")
    return Image.fromarray(np.rint(values / 257).astype(np.uint8), mode="L")


def read_image(path: Path, resolution: int, channels: int = 3) -> np.ndarray:
    """One image as ``uint8 [channels, resolution, resolution]``: RGB (3) or grey (1).

    The central square (side: the image's shorter side) is resized to ``resolution``
    with Pillow's Lanczos filter: the same as resizing the shorter side to ``resolution``
    and center-cropping the longer one.
    """
    size, mode = (resolution, resolution), "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image.draft(mode, size)
            if image.mode in WIDE_GREY_MODES:
                image = _grey_8_bit(image, path)
            fitted = ImageOps.fit(image.convert(mode), size, Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({error})") from error
    return (
        np.asarray(fitted, dtype=np.uint8)
        .reshape(resolution, resolution, channels)
        .transpose(2, 0, 1)
    )


def folder_channels(files: list[Path]) -> int:
    """1 when every image of ``files`` is greyscale (its channels would be equal as RGB),
    else 3; read from the files' headers."""
    for path in files:
        try:
            with Image.open(path) as image:
                if image.mode not in GREY_MODES:
                    return 3
        except (OSError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path}: not a readable PNG/JPEG image ({error})") from error
    return 1


def _folder_files(directory: Path) -> tuple[list[Path], np.ndarray, np.ndarray, int]:
    """Files of :func:`read_image_folder`, their labels ``int64 [N]``, test mask ``[N]``
    and channels (:func:`folder_channels`)."""
    files = image_files(directory)
    if len(files) < 2:
        raise FileNotFoundError(
            f"{directory}: no PNG/JPEG images in folder (found {len(files)}, need at least 2)"
        )
    parents = {parent: k for k, parent in enumerate(sorted({path.parent for path in files}))}
    labels = np.array([parents[path.parent] for path in files], dtype=np.int64)
    test = np.arange(len(files)) % FOLDER_TEST_EVERY == 0
    return files, labels, test, folder_channels(files)


def _read_images(files: list[Path], labels: np.ndarray, resolution: int, channels: int) -> tuple:
    return np.stack([read_image(path, resolution, channels) for path in files]), labels


def read_image_folder(directory: Path, resolution: int) -> Split:
    """The PNG/JPEG images under ``directory`` as ``uint8 [N, C, resolution, resolution]``:
    ``C = 1`` when every image is greyscale, else 3 (RGB).

    Files are sorted by relative path; those at positions ``0, 10, 20, ...`` (every
    :data:`FOLDER_TEST_EVERY`-th, from the first) form the test split, the rest the train
    split. An image's label is the index of its parent folder among the sorted distinct
    parent folders (all 0 for a flat folder).
    """
    files, labels, test, channels = _folder_files(directory)
    images, _ = _read_images(files, labels, resolution, channels)
    return Split(images[~test], labels[~test], images[test], labels[test])


def image_folder_parts(
    directory: Path, resolution: int, per_part: int = 4096
) -> tuple[list[LazyPart], list[LazyPart]]:
    """Train and test parts of :func:`read_image_folder`, ``per_part`` images each."""
    files, labels, test, channels = _folder_files(directory)
    splits = []
    for mask in (~test, test):
        chosen = [path for path, keep in zip(files, mask, strict=True) if keep]
        chosen_labels = labels[mask]
        splits.append([
            LazyPart(
                len(chosen[k : k + per_part]),
                partial(_read_images, chosen[k : k + per_part], chosen_labels[k : k + per_part],
                        resolution, channels),
            )
            for k in range(0, len(chosen), per_part)
        ])  # fmt: skip
    return splits[0], splits[1]
