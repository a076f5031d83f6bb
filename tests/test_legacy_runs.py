"""Run folders and exports written by ndm 0.1 (before the package was split by concern)
still load, give the same losses, resume and sample."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ndm import load_pretrained, load_run, train

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())

pytestmark = pytest.mark.usefixtures("single_thread")


def _losses(model: torch.nn.Module) -> dict[str, list[float]]:
    """The per-example loss terms on the batch ``reference.json`` was computed on."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    losses = model(x, torch.Generator().manual_seed(1))
    return {k: v.detach().double().tolist() for k, v in losses.items()}


@pytest.mark.parametrize("name", ["points", "discrete"])
def test_legacy_run_gives_the_losses_it_gave(name):
    _, model = load_run(FIXTURES / name)
    got = _losses(model)
    assert got.keys() == REFERENCE[name].keys()
    for key, want in REFERENCE[name].items():
        # float32 rounding of the same formula, evaluated through the shared Gaussian path
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want), rtol=1e-5, atol=1e-5)


def test_legacy_export_gives_the_losses_it_gave():
    _, model = load_pretrained(FIXTURES / "points-export")
    for key, want in REFERENCE["points-export"].items():
        torch.testing.assert_close(
            torch.tensor(_losses(model)[key]), torch.tensor(want), rtol=1e-5, atol=1e-5
        )


def test_legacy_run_resumes_and_samples(tmp_path):
    run = tmp_path / "points"
    shutil.copytree(FIXTURES / "points", run)
    cfg, _ = load_run(run)
    assert cfg.train.transform_lr is None  # 0.1 stored 0.0 for "the same as lr"
    model = train(replace(cfg, train=replace(cfg.train, steps=cfg.train.steps + 1)), run, True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == cfg.train.steps + 1
    assert model.sample((5, 2), sampler="ddim", steps=3).sample.shape == (5, 2)
