"""``ndm export`` and ``ndm.load_pretrained``: the same model back, for every kind of run."""

import json
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save

from ndm import load_pretrained, load_run
from ndm.cli import main
from ndm.runs.config import (
    DataConfig,
    EvalConfig,
    LatentConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from ndm.runs.export import export_run
from ndm.runs.training import train

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = TrainConfig(steps=3, batch_size=16, warmup_steps=1, checkpoint_every=3, log_every=1)
KINDS = {
    "points": RunConfig(DataConfig(n_train=128, n_test=16), ModelConfig(hidden=16, depth=1),
                        TRAIN, EvalConfig(n_eval=8)),
    "image": RunConfig(DataConfig("digits"), ModelConfig(objective="discrete", num_steps=10),
                       TRAIN, EvalConfig(n_eval=8)),
    "latent": RunConfig(DataConfig("digits"), ModelConfig(objective="discrete", num_steps=10),
                        TRAIN, EvalConfig(n_eval=8),
                        LatentConfig(latent_mode="end_to_end", latent_channels=2,
                                     latent_hidden=8, autoencoder_steps=1)),
}  # fmt: skip


def _samples(model, shape) -> torch.Tensor:
    return model.sample(shape, "ddpm", 5, torch.Generator().manual_seed(3)).sample


@pytest.mark.parametrize("kind", KINDS)
def test_an_export_loads_the_same_model(tmp_path, kind, capsys):
    run, out = tmp_path / "run", tmp_path / "export"
    train(KINDS[kind], run)
    assert main(["export", str(run), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    cfg, model = load_run(run)
    loaded_cfg, loaded = load_pretrained(out)
    assert loaded_cfg == cfg and not loaded.training
    shape = (4, 2) if kind == "points" else (4, 1, 8, 8)
    assert torch.equal(_samples(model, shape), _samples(loaded, shape))
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 1  # never overwritten
    assert "already holds an export" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_a_broken_export_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an ndm export folder"):
        load_pretrained(tmp_path)
    (tmp_path / "model.json").write_text('{"config": {}, "shape": [2], "num_levels": null}')
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="does not hold a usable ndm export"):
        load_pretrained(tmp_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    train(KINDS["points"], folder / "run")
    export_run(folder / "run", folder / "export")
    return folder


def _tampered(exported, tmp_path, weights=None, description=None):
    out = shutil.copytree(exported / "export", tmp_path / "tampered")
    if weights is not None:
        tensors = load_file(out / "model.safetensors")
        weights(tensors)
        (out / "model.safetensors").write_bytes(save(tensors))
    if description is not None:
        record = json.loads((out / "model.json").read_text())
        description(record)
        (out / "model.json").write_text(json.dumps(record))
    return out


def _set(key, value):
    def change(record):
        record[key] = value

    return change


def _first_weight(change):
    def tamper(tensors):
        name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
        tensors[name] = change(tensors[name])

    return tamper


@pytest.mark.parametrize(
    ("weights", "description", "message"),
    [
        (_first_weight(lambda v: v.fill_(float("nan"))), None, "hold NaN or inf"),
        (_first_weight(lambda v: v.to(torch.int32)), None, "torch.int32"),
        (_first_weight(lambda v: v.to(torch.float16)), None, "torch.float16"),
        (_first_weight(lambda v: v[:1]), None, "the config's model has"),
        (None, _set("num_levels", -3), "num_levels must be null or an integer in 2..65536"),
        (None, _set("num_levels", 1), "num_levels must be"),
        (None, _set("num_levels", 1e30), "num_levels must be"),
        (None, _set("shape", [2, -1]), "shape must be"),
        (None, lambda r: r["config"]["model"].update(hidden=6000), "describes an MLP of about"),
    ],
)
def test_a_tampered_export_is_refused_with_what_is_wrong(
    exported, tmp_path, weights, description, message
):
    out = _tampered(exported, tmp_path, weights, description)
    with pytest.raises(ValueError, match="does not hold a usable ndm export") as refused:
        load_pretrained(out)
    assert message in str(refused.value)


def test_an_interrupted_export_leaves_nothing_and_two_exports_never_share_a_folder(
    exported, tmp_path, monkeypatch
):
    out = tmp_path / "export"
    with monkeypatch.context() as patched:
        patched.setattr("ndm.runs.export.save_json", _raise_interrupt)
        with pytest.raises(KeyboardInterrupt):
            export_run(exported / "run", out)
    assert list(tmp_path.iterdir()) == []  # no half export, no temporary
    export_run(exported / "run", out)  # the export can be made again
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert "path" in json.loads((out / "model.json").read_text())["config"]["data"]
    assert json.loads((out / "model.json").read_text())["config"]["data"]["path"] == ""

    shared = tmp_path / "shared"
    results = []

    def export():
        try:
            export_run(exported / "run", shared)
            results.append("done")
        except FileExistsError:
            results.append("refused")

    threads = [threading.Thread(target=export) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["done", "refused", "refused", "refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "shared"]


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt
