"""Diagnostics of a transform (ndm.diagnostics) and the gradient split of the training log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ndm.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from ndm.diagnostics import identity_transform_gap, transform_displacement
from ndm.model import NDM
from ndm.process import NeuralDiffusion
from ndm.schedules import LogSNRLinearSchedule
from ndm.training import train
from ndm.transforms import AffineTransform, IdentityTransform
from tests.exact_gaussian import MATRIX, SHIFT, ExactGaussianPredictor, sample_data


def _exact_model(transform: torch.nn.Module, predictor_transform: torch.nn.Module) -> NDM:
    schedule = LogSNRLinearSchedule().double()
    predictor = ExactGaussianPredictor(schedule, predictor_transform)
    return NDM(NeuralDiffusion(schedule, transform), predictor, "discrete", num_steps=50)


def test_displacement_of_an_affine_transform_is_its_closed_form() -> None:
    x = sample_data(256, seed=0)
    times = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    affine = _exact_model(AffineTransform(MATRIX, SHIFT), IdentityTransform())
    # F(x, t) - x = t (x M^T + b)
    expected = times**2 * (x @ MATRIX.T + SHIFT).square().sum() / x.square().sum()
    torch.testing.assert_close(transform_displacement(affine, x, times), expected)
    identity = _exact_model(IdentityTransform(), IdentityTransform())
    assert torch.equal(transform_displacement(identity, x, times), torch.zeros(3).double())
    with pytest.raises(ValueError, match="non-empty 1-D"):
        transform_displacement(affine, x, torch.tensor(0.5))


def test_identity_gap_is_positive_when_the_predictor_relies_on_f() -> None:
    x = sample_data(128, seed=2)
    # the exact posterior mean of the affine process: the bound is tight with F, not without
    uses_f = identity_transform_gap(
        _exact_model(AffineTransform(MATRIX, SHIFT), AffineTransform(MATRIX, SHIFT)), x
    )
    assert uses_f["gap"] > 5 * uses_f["gap_stderr"] > 0
    torch.testing.assert_close(
        uses_f["gap"], (uses_f["nelbo_identity"] - uses_f["nelbo"]).mean().item()
    )
    # a model whose F is already the identity: the same bound, example by example
    plain = identity_transform_gap(_exact_model(IdentityTransform(), IdentityTransform()), x)
    assert torch.equal(plain["nelbo"], plain["nelbo_identity"]) and plain["gap"] == 0


@pytest.mark.parametrize("transform", ["learned", "identity"])
def test_training_log_splits_the_gradient_norm(tmp_path: Path, transform: str) -> None:
    cfg = RunConfig(
        DataConfig("checkerboard", n_train=256, n_test=64),
        ModelConfig(transform=transform, hidden=16, depth=2),
        TrainConfig(steps=2, batch_size=32, log_every=1, checkpoint_every=2, warmup_steps=1),
        EvalConfig(),
    )
    train(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    for line in lines:
        if transform == "identity":
            assert "grad_norm_phi" not in line
            continue
        assert line["grad_norm_phi"] > 0 and line["grad_norm_theta"] > 0
        # the two parts make up the whole norm (before clipping)
        whole = (line["grad_norm_phi"] ** 2 + line["grad_norm_theta"] ** 2) ** 0.5
        assert whole == pytest.approx(line["grad_norm"], rel=1e-5)
