"""Inputs built to hurt: config files that expand to gigabytes or nest without end, a gzip
bomb in an IDX file, and a disk that fills during a write. Each is refused with one line
(or, for the disk, one ``OSError`` naming the file) while memory stays small and nothing on
disk is half-written."""

import errno
import gzip
import json
import struct
import sys
import tracemalloc
from types import SimpleNamespace

import pytest
import torch

from ndm.cli import main
from ndm.data import atomic
from ndm.data.atomic import atomic_write
from ndm.data.formats import IDX_IMAGES_MAGIC, read_idx
from ndm.runs.checkpoint import save_checkpoint
from ndm.runs.config import MAX_CONFIG_BYTES, read_config_file


def _peak_bytes(action) -> int:
    """The peak of Python's allocations while ``action()`` runs (raising is fine)."""
    tracemalloc.start()
    try:
        action()
    except (ValueError, OSError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _alias_bomb(levels: int) -> str:
    """YAML of a few hundred bytes whose aliases expand to ``10 ** levels`` strings."""
    lines = ["data:", '  path: &a0 ["xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx"]']
    for k in range(1, levels):
        lines.append(f"  n_train{k}: &a{k} [" + ",".join([f"*a{k - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(9))  # 10^9 strings if expanded
    assert bomb.stat().st_size < 600
    with pytest.raises(ValueError, match="YAML alias at line 3") as refused:
        read_config_file(bomb)
    assert len(str(refused.value)) < 200
    assert _peak_bytes(lambda: read_config_file(bomb)) < 5 * 2**20


def test_configs_too_large_or_too_deep_and_unbounded_values_are_one_short_line(tmp_path, capsys):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"data": {"path": "x" * (MAX_CONFIG_BYTES + 1)}}))
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("[" * 100_000 + "]" * 100_000)
    long_value = tmp_path / "long.json"
    long_value.write_text(json.dumps({"data": {"path": list(range(10_000))}}))
    for path, message in (
        (big, "more than a config's"),
        (deep_json, "nested too deep"),
        (deep_yaml, "nested too deep"),
        (long_value, "path must be of type str"),
    ):
        assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "r")]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and len(lines[0]) < 400, lines
    assert not (tmp_path / "r").exists()


def _idx_gz(path, dims, payload: int) -> None:
    """A gzipped IDX image file whose header says ``dims`` and holds ``payload`` zeros."""
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(struct.pack(">I", IDX_IMAGES_MAGIC) + struct.pack(">3I", *dims))
        block = bytes(1 << 20)
        for _ in range(payload >> 20):
            file.write(block)
        file.write(bytes(payload % (1 << 20)))


def test_a_gzip_bomb_in_an_idx_file_is_refused_while_streaming(tmp_path):
    longer = tmp_path / "longer.gz"
    _idx_gz(longer, (100, 28, 28), 300 << 20)  # 300 MB of zeros behind a 78 kB header
    assert longer.stat().st_size < 2 << 20
    with pytest.raises(ValueError, match="found more"):
        read_idx(longer, IDX_IMAGES_MAGIC)
    assert _peak_bytes(lambda: read_idx(longer, IDX_IMAGES_MAGIC)) < 20 * 2**20

    claims = tmp_path / "claims.gz"
    _idx_gz(claims, (60_000_000, 28, 28), 1 << 20)  # the header claims 47 GB
    with pytest.raises(ValueError, match="more than 100 times the gzipped file"):
        read_idx(claims, IDX_IMAGES_MAGIC)

    good = tmp_path / "good.gz"
    _idx_gz(good, (2, 3, 4), 24)
    assert read_idx(good, IDX_IMAGES_MAGIC).shape == (2, 3, 4)


def _full_disk(monkeypatch) -> None:
    """What a full disk looks like to the writer: no free bytes."""
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: SimpleNamespace(free=0))


def test_a_full_disk_is_one_error_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the previous checkpoint")

    def enospc(file):
        file.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="no space left on the device to write .*checkpoint.pt"):
        atomic_write(path, enospc)

    def torch_full(*args, **kwargs):  # torch.save's own message on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    _full_disk(monkeypatch)
    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(OSError, match="previous file is kept") as full:
        save_checkpoint(path, {"config": {}, "step": 1, "model": {}})
    assert full.value.errno == errno.ENOSPC and "\n" not in str(full.value)
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_ndm_sample_on_a_full_disk_is_one_line_and_leaves_the_old_output(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    flags = "--steps 2 --hidden 16 --depth 1 --n-train 64 --n-test 16 --batch-size 16 --eval none"
    assert main(["train", "--run-dir", str(run), *flags.split()]) == 0
    out = tmp_path / "t.png"
    assert main(["sample", str(run), "--sampler", "ddim", "--steps", "2", "--out", str(out)]) == 0
    before = out.read_bytes(), out.with_suffix(".pt").read_bytes()
    _full_disk(monkeypatch)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("pos")))
    capsys.readouterr()
    assert main(["sample", str(run), "--sampler", "ddim", "--steps", "2", "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no space left on the device" in lines[0], lines
    assert (out.read_bytes(), out.with_suffix(".pt").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "t.png", "t.pt"]


def test_fid_that_cannot_import_is_refused_before_the_first_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # a broken install
    run = tmp_path / "run"
    flags = "--dataset digits --architecture cpu8 --steps 2 --batch-size 8 --fid-samples 10"
    assert main(["train", "--run-dir", str(run), *flags.split()]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs torchmetrics" in lines[0], lines
    assert not run.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--batch-size 4000000000", "a micro-batch of 4000000000 needs"),
        ("--hidden 100000", "an MLP of 100000 hidden units (training state) needs"),
        ("--n-train 3000000000", "toy points needs"),
        ("--device meta", "device must be a torch device name (not meta)"),
    ],
)
def test_sizes_that_cannot_be_allocated_are_one_line_with_the_size(
    tmp_path, capsys, flags, message
):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *flags.split()]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "GiB" in lines[0] or "meta" in lines[0]
    assert not run.exists()


def test_a_float_batch_size_in_a_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  batch_size: 1e23\n")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "r")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "batch_size must be of type int" in lines[0], lines
