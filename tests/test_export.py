"""``ndm export`` and ``ndm.load_pretrained``: the same model back, for every kind of run."""

import pytest
import torch

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
