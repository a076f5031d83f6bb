"""Image datasets memory-mapped from their copy in a cache folder (ndm.data.level_files)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ndm.data.formats import LazyPart, image_folder_parts, read_image_folder
from ndm.data.images import load_image_dataset
from ndm.data.level_files import level_files
from tests.test_image_data import write_cifar, write_image, write_imagenet


def _mapped_file(address: int) -> str:
    """The file (or ``[heap]``, or ``""`` for anonymous memory) mapped at ``address`` in this
    process, from ``/proc/self/maps``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(bound, 16) for bound in fields[0].split("-"))
        if low <= address < high:
            return fields[5].strip() if len(fields) == 6 else ""
    raise AssertionError(f"{address:#x} is not mapped")


def _copies(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


def test_cached_imagenet_equals_the_in_memory_read(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "imagenet", 32)
    whole = load_image_dataset("imagenet32", tmp_path / "imagenet")
    mapped = load_image_dataset("imagenet32", tmp_path / "imagenet", cache=tmp_path / "cache")
    for name in ("train", "test", "train_labels", "test_labels"):
        assert torch.equal(getattr(whole, name), getattr(mapped, name)), name
    assert mapped.train.dtype == torch.uint8 and mapped.num_levels == 256
    # the images are the .npy copy mapped from disk, not an array in memory
    (copy,) = _copies(tmp_path / "cache")
    for split in ("train", "test"):
        expected = tmp_path / "cache" / copy / f"{split}_images.npy"
        assert _mapped_file(getattr(mapped, split).data_ptr()) == str(expected)
    assert _mapped_file(whole.train.data_ptr()) in ("", "[heap]")


def test_cached_copy_is_resized_reused_and_renewed_when_the_source_changes(
    tmp_path: Path,
) -> None:
    source, cache = tmp_path / "imagenet", tmp_path / "cache"
    write_imagenet(source, 32)
    resized = load_image_dataset("imagenet32", source, resolution=16, cache=cache)
    assert torch.equal(resized.train, load_image_dataset("imagenet32", source, 16).train)
    (first,) = _copies(cache)
    stamp = (cache / first / "train_images.npy").stat().st_mtime_ns
    load_image_dataset("imagenet32", source, resolution=16, cache=cache)
    assert _copies(cache) == [first]
    assert (cache / first / "train_images.npy").stat().st_mtime_ns == stamp  # reused
    write_imagenet(source, 32, batches=(1, 2, 3, 10))  # a new batch: a new copy
    renewed = load_image_dataset("imagenet32", source, resolution=16, cache=cache)
    assert len(_copies(cache)) == 2 and renewed.train.shape[0] == 8


def test_small_datasets_are_copied_whole(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar")
    whole = load_image_dataset("cifar10", tmp_path / "cifar")
    mapped = load_image_dataset("cifar10", tmp_path / "cifar", cache=tmp_path / "cache")
    assert torch.equal(whole.train, mapped.train) and torch.equal(whole.test, mapped.test)


def test_image_folders_are_copied_a_part_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for k in range(23):
        write_image(
            tmp_path / "images" / f"{k % 3}" / f"{k:02d}.png", rng.integers(0, 256, (9, 12, 3))
        )
    whole = read_image_folder(tmp_path / "images", 8)
    train_parts, test_parts = image_folder_parts(tmp_path / "images", 8, per_part=4)
    assert [part.count for part in train_parts] == [4, 4, 4, 4, 4]
    for parts, images, labels in ((train_parts, whole.train, whole.train_labels),
                                  (test_parts, whole.test, whole.test_labels)):  # fmt: skip
        read = [part.read() for part in parts]
        assert np.array_equal(np.concatenate([x for x, _ in read]), images)
        assert np.array_equal(np.concatenate([y for _, y in read]), labels)
    mapped = load_image_dataset("folder", tmp_path / "images", 8, cache=tmp_path / "cache")
    assert torch.equal(mapped.train, torch.from_numpy(whole.train))
    assert torch.equal(mapped.test_labels, torch.from_numpy(whole.test_labels))


def test_concurrent_readers_make_one_copy(tmp_path: Path) -> None:
    """Two readers of one dataset at once (as the processes of a node): the second waits
    for the first's copy and maps it."""
    images, labels = np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4), np.zeros(2, np.int64)
    builds = []

    def parts() -> tuple[list[LazyPart], list[LazyPart]]:
        builds.append(1)
        time.sleep(0.3)
        return [LazyPart(2, lambda: (images, labels))], [LazyPart(2, lambda: (images, labels))]

    source = tmp_path / "source"
    source.mkdir()
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                level_files("mnist", source, None, tmp_path / "cache", parts, lambda x: x)
            )
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(results) == 2
    assert all(torch.equal(r[0], torch.from_numpy(images)) for r in results)
    assert len(_copies(tmp_path / "cache")) == 1


def test_an_interrupted_copy_leaves_nothing_behind(tmp_path: Path) -> None:
    images = np.zeros((2, 1, 4, 4), np.uint8)
    labels = np.zeros(2, np.int64)

    def broken() -> tuple[np.ndarray, np.ndarray]:
        raise OSError("disk unplugged")

    def parts() -> tuple[list[LazyPart], list[LazyPart]]:
        return [LazyPart(2, lambda: (images, labels)), LazyPart(2, broken)], []

    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(OSError, match="disk unplugged"):
        level_files("mnist", source, None, tmp_path / "cache", parts, lambda x: x)
    assert _copies(tmp_path / "cache") == []


def test_a_corrupt_copy_is_named(tmp_path: Path) -> None:
    source, cache = tmp_path / "imagenet", tmp_path / "cache"
    write_imagenet(source, 32)
    load_image_dataset("imagenet32", source, cache=cache)
    (copy,) = _copies(cache)
    (cache / copy / "test_images.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=f"{copy}: corrupt copy of dataset 'imagenet32'.*delete"):
        load_image_dataset("imagenet32", source, cache=cache)


# Trains 3 steps on a synthetic ImageNet 32x32 of TOTAL_MB MB (BATCHES npz batches) and prints the
# largest growth of the process's anonymous memory (RssAnon, polled), in MB.
_MEMORY_PROBE = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    import numpy as np

    def anon_mb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024

    folder, cache = Path(sys.argv[1]), sys.argv[2]
    from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
    from ndm.runs.training import train
    base, peak, done = anon_mb(), [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], anon_mb() - base)
            time.sleep(0.002)

    threading.Thread(target=poll, daemon=True).start()
    cfg = RunConfig(
        DataConfig("imagenet32", path=str(folder), cache=cache),
        ModelConfig(transform="identity", architecture="cpu8", objective="discrete",
                    num_steps=10),
        TrainConfig(steps=3, batch_size=4, checkpoint_every=3, log_every=3),
        EvalConfig(),
    )
    train(cfg, folder.parent / f"run-{folder.name}-{'cached' if cache else 'whole'}")
    done.set()
    print(f"{peak[0]:.0f}")
    """
)
TOTAL_MB, BATCHES = 320, 16


def _peak_anon_mb(folder: Path, cache: str) -> float:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(folder), cache],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def _write_synthetic_imagenet(folder: Path, megabytes: int) -> None:
    """:data:`BATCHES` npz batches of 32x32 images, ``megabytes`` MB of them in all."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    per_batch = megabytes * 2**20 // BATCHES // 3072
    for k in range(1, BATCHES + 1):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        np.savez(folder / f"train_data_batch_{k}.npz", data=data, labels=np.full(per_batch, k))
    np.savez(folder / "val_data.npz", data=data[:8], labels=np.ones(8, np.int64))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_training_on_a_dataset_larger_than_the_memory_budget(tmp_path: Path) -> None:
    """With a cache, a run holds one npz batch at a time while copying and only the drawn
    rows after: its anonymous memory exceeds that of the same run on a tiny dataset by well
    under the data's size (the budget, a quarter of it), whereas reading the data whole
    takes more than all of it."""
    _write_synthetic_imagenet(tmp_path / "big", TOTAL_MB)
    _write_synthetic_imagenet(tmp_path / "tiny", 1)
    baseline = _peak_anon_mb(tmp_path / "tiny", str(tmp_path / "cache"))
    cached = _peak_anon_mb(tmp_path / "big", str(tmp_path / "cache")) - baseline
    whole = _peak_anon_mb(tmp_path / "big", "") - baseline
    assert cached < TOTAL_MB / 4 < TOTAL_MB < whole, (cached, whole)
