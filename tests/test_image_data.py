"""Image dataset readers on tiny files written in each real format, and the level maps."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ndm.data.formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from ndm.data.images import (
    IMAGE_DATASETS,
    dequantise,
    load_image_dataset,
    random_horizontal_flip,
    resize_levels,
    to_model_space,
    uses_flips,
)
from tests.payload import CodeRunningPayload

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """IDX encoding: big-endian magic and dimensions, then the uint8 values in C order."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def pattern(n: int, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """``n`` images of ``shape`` whose value at flat pixel ``p`` of image ``m`` is
    ``(37 (m + offset) + p) mod 256``."""
    m = np.arange(n).reshape(-1, *[1] * len(shape)) + offset
    p = np.arange(int(np.prod(shape))).reshape(shape)
    return ((37 * m + p) % 256).astype(np.uint8)


def write_mnist(folder: Path, gz: bool, n_train: int = 3, n_test: int = 2) -> dict:
    """The four MNIST IDX files of ``n_train``/``n_test`` 28x28 images; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": pattern(n_train, (28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": pattern(n_test, (28, 28), offset=100),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 7) % 10,
    }
    for name, array in arrays.items():
        magic = IDX_IMAGES_MAGIC if array.ndim == 3 else IDX_LABELS_MAGIC
        data = idx_bytes(magic, array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """CIFAR-10 rows ``[N, 3072]``: the red, green and blue 32x32 planes, each row-major."""
    return np.stack([np.concatenate([plane.ravel() for plane in image]) for image in images])


def write_cifar(folder: Path, per_batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Five train batches and a test batch of ``[per_batch, 3, 32, 32]`` images."""
    folder.mkdir(parents=True, exist_ok=True)
    images = pattern(6 * per_batch, (3, 32, 32))
    labels = np.arange(6 * per_batch) % 10
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        rows = slice(k * per_batch, (k + 1) * per_batch)
        batch = {b"data": cifar_rows(images[rows]), b"labels": labels[rows].tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    return images, labels


def write_imagenet(folder: Path, side: int, batches: tuple[int, ...] = (1, 2, 10)) -> dict:
    """``train_data_batch_<k>.npz`` for each ``k`` (2 images each, class ``k``, 1-based) and
    ``val_data.npz`` (1 image of class 1000); returns the images by file stem."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for k in batches:
        images = pattern(2, (3, side, side), offset=k)
        np.savez(folder / f"train_data_batch_{k}.npz", data=cifar_rows(images), labels=[k, k])
        written[k] = images
    written["val"] = pattern(1, (3, side, side), offset=50)
    np.savez(folder / "val_data.npz", data=cifar_rows(written["val"]), labels=[1000])
    return written


def test_names_and_flips() -> None:
    assert set(IMAGE_DATASETS) == {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "imagenet32",
        "imagenet64",
        "folder",
    }
    assert [name for name in IMAGE_DATASETS if uses_flips(name)] == [
        "cifar10",
        "imagenet32",
        "imagenet64",
    ]


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz)
    data = load_image_dataset("fashion_mnist", tmp_path)
    assert data.train.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.num_levels == 256 and data.name == "fashion_mnist"
    assert torch.equal(data.train[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(data.test[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.train_labels.tolist() == [0, 1, 2] and data.test_labels.tolist() == [7, 8]
    assert data.train[1, 0, 2, 5].item() == (37 + 2 * 28 + 5) % 256


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist() -> None:
    data = load_image_dataset("fashion_mnist", FASHION_MNIST)
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train.max().item() == 255


def test_cifar_channel_major_layout(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_image_dataset("cifar10", tmp_path)  # the parent folder is found too
    assert torch.equal(data.train, torch.from_numpy(images[:10]))
    assert torch.equal(data.test, torch.from_numpy(images[10:]))
    assert data.train_labels.tolist() == labels[:10].tolist()
    row = cifar_rows(images[3:4])[0]
    for c, i, j in [(0, 0, 1), (1, 5, 7), (2, 31, 30)]:
        assert data.train[3, c, i, j].item() == row[1024 * c + 32 * i + j]
        assert data.train[3, c, i, j].item() == (37 * 3 + 1024 * c + 32 * i + j) % 256


@pytest.mark.parametrize("side", [32, 64])
def test_imagenet_round_trip(tmp_path: Path, side: int) -> None:
    written = write_imagenet(tmp_path, side)
    data = load_image_dataset(f"imagenet{side}", tmp_path)
    expected = np.concatenate([written[1], written[2], written[10]])  # numeric batch order
    assert torch.equal(data.train, torch.from_numpy(expected))
    assert torch.equal(data.test, torch.from_numpy(written["val"]))
    assert data.train_labels.tolist() == [0, 0, 1, 1, 9, 9] and data.test_labels.tolist() == [999]


def write_image(path: Path, array: np.ndarray) -> None:
    """Save ``[H, W, 3]`` or ``[H, W]`` uint8 pixels with the format of ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_folder_crop_resize_split_labels(tmp_path: Path) -> None:
    red = np.zeros((30, 40, 3))
    red[..., 0] = 255
    wide = np.zeros((10, 30, 3))  # black | white | black thirds: the centre crop is white
    wide[:, 10:20] = 255
    green = np.zeros((48, 64, 3))
    green[..., 1] = 200
    tall = np.zeros((30, 10))  # grey scale, 0 | 128 | 0 from top to bottom
    tall[10:20] = 128
    write_image(tmp_path / "a" / "0.png", red)
    write_image(tmp_path / "a" / "1.png", wide)
    write_image(tmp_path / "b" / "2.jpg", green)
    write_image(tmp_path / "b" / "3.png", tall)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    data = load_image_dataset("folder", tmp_path, resolution=10)
    assert data.train.shape == (3, 3, 10, 10) and data.test.shape == (1, 3, 10, 10)
    assert data.train.dtype == torch.uint8 and data.num_levels == 256
    assert data.test_labels.tolist() == [0] and data.train_labels.tolist() == [0, 1, 1]
    colour = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]
    assert torch.equal(data.test[0], colour.expand(3, 10, 10))  # a/0.png, sorted first
    assert torch.equal(data.train[0], torch.full((3, 10, 10), 255, dtype=torch.uint8))
    assert (data.train[1].int() - torch.tensor([0, 200, 0])[:, None, None]).abs().max() <= 2
    assert torch.equal(data.train[2], torch.full((3, 10, 10), 128, dtype=torch.uint8))
    smaller = load_image_dataset("folder", tmp_path, resolution=4)
    assert smaller.train.shape == (3, 3, 4, 4)
    assert torch.equal(smaller.test[0], colour.expand(3, 4, 4))


def test_a_greyscale_folder_is_one_channel_and_every_tenth_file_is_test(tmp_path: Path) -> None:
    for k in range(12):  # 8-bit and 16-bit grey files
        levels = np.full((6, 6), 20 * k)
        write_image(tmp_path / f"{k:02d}.png", levels)
    Image.fromarray(np.full((6, 6), 60 * 257, np.uint16)).save(tmp_path / "12.png")
    data = load_image_dataset("folder", tmp_path, resolution=6)
    assert data.train.shape == (11, 1, 6, 6) and data.test.shape == (2, 1, 6, 6)
    assert [int(x.flatten()[0]) for x in data.test] == [0, 200]  # files 00 and 10 of 00..12
    assert int(data.train[-1].flatten()[0]) == 60  # 16-bit levels scaled to 8 bits
    write_image(tmp_path / "13.png", np.zeros((6, 6, 3)))  # one colour file: RGB for all
    assert load_image_dataset("folder", tmp_path, resolution=6).train.shape[1] == 3


def test_digits_levels_and_split() -> None:
    from sklearn.datasets import load_digits

    data = load_image_dataset("digits", None)
    assert data.num_levels == 17 and data.train.dtype == torch.uint8
    assert data.train.shape == (1500, 1, 8, 8) and data.test.shape == (297, 1, 8, 8)
    both = torch.cat([data.train, data.test])
    assert both.min().item() == 0 and both.max().item() == 16
    assert set(both.unique().tolist()) <= set(range(17))
    # disjoint: train and test together are every digit exactly once
    digits = load_digits()
    full = digits.images.astype(np.uint8).reshape(1797, 64)
    rows = sorted(row.tobytes() for row in both.reshape(1797, 64).numpy())
    assert rows == sorted(row.tobytes() for row in full)
    labels = torch.cat([data.train_labels, data.test_labels])
    assert torch.bincount(labels).tolist() == np.bincount(digits.target).tolist()
    again = load_image_dataset("digits", None)
    assert torch.equal(again.test, data.test) and torch.equal(again.train_labels, data.train_labels)
    other = load_image_dataset("digits", None, seed=1)
    assert not torch.equal(other.test, data.test)


def test_resize_levels() -> None:
    digits = load_image_dataset("digits", None, resolution=16)
    assert digits.train.shape == (1500, 1, 16, 16) and digits.train.max().item() <= 16
    constant = torch.full((2, 3, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_levels(constant, 16, 256), torch.full((2, 3, 16, 16), 77))
    assert resize_levels(constant, 28, 256) is constant


@pytest.mark.parametrize("num_levels", [17, 256])
def test_to_model_space_bin_centres(num_levels: int) -> None:
    k = torch.arange(num_levels, dtype=torch.uint8)
    x = to_model_space(k, num_levels)
    assert x.dtype == torch.float32
    assert x[0].item() == pytest.approx(-1 + 1 / num_levels)
    assert x[-1].item() == pytest.approx(1 - 1 / num_levels)
    expected = (2 * torch.arange(num_levels, dtype=torch.float64) + 1) / num_levels - 1
    assert torch.allclose(x.double(), expected, atol=1e-7)


@pytest.mark.parametrize("num_levels", [17, 256])
def test_dequantise_stays_in_bin(num_levels: int) -> None:
    k = torch.arange(num_levels).repeat(40).reshape(-1, 1, 2, num_levels)
    x = dequantise(k, num_levels, torch.Generator().manual_seed(0))
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == k.shape
    assert torch.allclose(x, 2 * (k + u) / num_levels - 1)
    assert x.min().item() >= -1 and x.max().item() < 1
    assert torch.equal(torch.floor((x.double() + 1) * num_levels / 2).long(), k)
    centre = to_model_space(k, num_levels)
    assert abs((x - centre).mean().item() * num_levels) < 0.05  # E[u] = 1/2


def test_random_horizontal_flip_flips_chosen_examples() -> None:
    x = torch.arange(64 * 2 * 3 * 5, dtype=torch.float32).reshape(64, 2, 3, 5)
    out = random_horizontal_flip(x, torch.Generator().manual_seed(3))
    chosen = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < chosen.sum().item() < 64
    assert torch.equal(out[chosen], x[chosen].flip(-1))
    assert torch.equal(out[~chosen], x[~chosen])
    assert torch.equal(out[chosen][..., 0], x[chosen][..., -1])


def _truncated_idx(folder: Path) -> str:
    write_mnist(folder, gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    return "train-images-idx3-ubyte.gz: expected 2352 bytes of uint8 images"


def _wrong_magic(folder: Path) -> str:
    write_mnist(folder, gz=False)
    labels = (folder / "t10k-labels-idx1-ubyte").read_bytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(labels)
    return "t10k-images-idx3-ubyte: expected IDX magic 0x00000803 (uint8 images), got 0x00000801"


def _missing_idx(folder: Path) -> str:
    write_mnist(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return "t10k-labels-idx1-ubyte: IDX file not found"


def _label_count(folder: Path) -> str:
    write_mnist(folder, gz=False)
    labels = idx_bytes(IDX_LABELS_MAGIC, np.zeros(5))
    (folder / "train-labels-idx1-ubyte").write_bytes(labels)
    return "train-labels-idx1-ubyte: 5 labels for the 3 images"


def _pickle_without_key(folder: Path) -> str:
    write_cifar(folder)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072))}))
    return "data_batch_2 lacks key b'labels'"


def _not_a_pickle(folder: Path) -> str:
    write_cifar(folder)
    (folder / "test_batch").write_bytes(b"not a pickle")
    return "test_batch: not a CIFAR-10 python pickle batch"


def _missing_batch(folder: Path) -> str:
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    return "data_batch_3: CIFAR-10 batch not found"


def _wrong_resolution(folder: Path) -> str:
    write_imagenet(folder, 32)
    return "train_data_batch_1.npz has 3072 values per image, which is 32x32, but resolution 64"


def _npz_without_labels(folder: Path) -> str:
    write_imagenet(folder, 64)
    np.savez(folder / "val_data.npz", data=np.zeros((1, 3 * 64 * 64), np.uint8))
    return "val_data.npz: lacks array 'labels'"


def _empty_folder(folder: Path) -> str:
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    return "no PNG/JPEG images in folder"


def _corrupt_image(folder: Path) -> str:
    write_image(folder / "good.png", np.zeros((4, 4)))
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    return "bad.jpg: not a readable PNG/JPEG image"


def _cifar_label_out_of_range(folder: Path) -> str:
    write_cifar(folder)
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [99]}
    (folder / "data_batch_4").write_bytes(pickle.dumps(batch))
    return "data_batch_4: labels must lie in 0..9, got 99..99"


def _imagenet_label_out_of_range(folder: Path) -> str:
    write_imagenet(folder, 32)
    np.savez(folder / "val_data.npz", data=np.zeros((1, 3 * 32 * 32), np.uint8), labels=[2000])
    return "val_data.npz: expected 1 labels in 1..1000"


def _npz_of_objects(folder: Path) -> str:
    write_imagenet(folder, 32)
    np.save(folder / "val_data.npz", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "val_data.npz.npy").rename(folder / "val_data.npz")
    return "val_data.npz: it holds pickled Python objects, not arrays"


MALFORMED = {
    "cifar_label": ("cifar10", _cifar_label_out_of_range, ValueError),
    "imagenet_label": ("imagenet32", _imagenet_label_out_of_range, ValueError),
    "npz_of_objects": ("imagenet32", _npz_of_objects, ValueError),
    "truncated_idx": ("mnist", _truncated_idx, ValueError),
    "wrong_magic": ("mnist", _wrong_magic, ValueError),
    "missing_idx": ("fashion_mnist", _missing_idx, FileNotFoundError),
    "label_count": ("mnist", _label_count, ValueError),
    "pickle_without_key": ("cifar10", _pickle_without_key, ValueError),
    "not_a_pickle": ("cifar10", _not_a_pickle, ValueError),
    "missing_batch": ("cifar10", _missing_batch, FileNotFoundError),
    "wrong_resolution": ("imagenet64", _wrong_resolution, ValueError),
    "npz_without_labels": ("imagenet64", _npz_without_labels, ValueError),
    "empty_folder": ("folder", _empty_folder, FileNotFoundError),
    "corrupt_image": ("folder", _corrupt_image, ValueError),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_files_name_the_file(tmp_path: Path, case: str) -> None:
    name, write, error = MALFORMED[case]
    folder = tmp_path / "data"
    message = write(folder)
    with pytest.raises(error) as caught:
        load_image_dataset(name, folder, resolution=8 if name == "folder" else None)
    assert message in str(caught.value)
    assert str(folder) in str(caught.value)
    assert "allow_pickle" not in str(caught.value)


def test_sixteen_bit_grey_pngs_are_scaled_to_eight_bits(tmp_path: Path) -> None:
    """Pillow's own conversion of a 16-bit image clips every value above 255 to white."""
    from ndm.data.formats import read_image

    levels = np.arange(64, dtype=np.int64).reshape(8, 8) * 4  # 8-bit levels 0..252
    Image.fromarray((levels * 257).astype(np.uint16)).save(tmp_path / "wide.png")
    image = read_image(tmp_path / "wide.png", 8)
    assert image.shape == (3, 8, 8)
    assert np.array_equal(image[0], levels) and np.array_equal(image[2], levels)


def test_bad_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown image dataset 'svhn'.*'cifar10'"):
        load_image_dataset("svhn", tmp_path)
    with pytest.raises(ValueError, match="'cifar10' is read from files.*give the path"):
        load_image_dataset("cifar10", None)
    with pytest.raises(FileNotFoundError, match="nowhere: does not exist"):
        load_image_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'folder' needs a resolution"):
        load_image_dataset("folder", tmp_path)
    with pytest.raises(ValueError, match="it takes no path"):
        load_image_dataset("digits", tmp_path)


def test_a_malicious_cifar_pickle_runs_no_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "executed"
    batch = {
        b"data": np.zeros((2, 3072), np.uint8),
        b"labels": [0, 1],
        b"x": CodeRunningPayload(marker),
    }
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="refused to load posix.system|refused to load os.system"):
        load_image_dataset("cifar10", folder)
    assert not marker.exists()


def test_cifar_batches_in_the_python2_format_still_load(tmp_path: Path) -> None:
    """The real batches are protocol-2 pickles with numpy arrays and bytes keys."""
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = write_cifar(folder)
    for name in ("data_batch_1", "test_batch"):
        batch = pickle.loads((folder / name).read_bytes())
        batch[b"batch_label"] = b"training batch 1 of 5"
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = load_image_dataset("cifar10", folder)
    assert data.train.shape[1:] == (3, 32, 32)
