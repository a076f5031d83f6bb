"""Diagnostics of a transform (ndm.analysis.diagnostics) and the gradient split of the training log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ndm.analysis.diagnostics import identity_transform_gap, transform_displacement
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import LogSNRLinearSchedule
from ndm.diffusion.transforms import AffineTransform, IdentityTransform
from ndm.models.ndm import NDM
from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from ndm.runs.training import train
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


# --- the knobs of a learned transform -----------------------------------------------------


def test_transform_init_scale_moves_f_at_start_in_proportion() -> None:
    from ndm.runs.builders import build_model

    x = sample_data(64, seed=3).float()
    times = torch.tensor([0.5, 1.0])
    moved = {}
    for scale in (0.0, 0.01, 0.02):
        torch.manual_seed(0)
        model = build_model(ModelConfig(hidden=16, depth=2, transform_init_scale=scale), (2,))
        moved[scale] = transform_displacement(model, x, times)
    assert torch.equal(moved[0.0], torch.zeros(2))
    # the output layer is linear in its parameters: twice the scale, four times ||F - x||^2
    torch.testing.assert_close(moved[0.02], 4 * moved[0.01])
    assert (moved[0.01] > 0).all()
    with pytest.raises(ValueError, match="shape a learned transform; transform is 'identity'"):
        ModelConfig(transform="identity", transform_form="interpolation")


def test_a_separate_learning_rate_for_phi(tmp_path: Path) -> None:
    """With ``transform_lr`` the transform's parameters form their own optimiser group at
    that rate, and with ``transform_lr = lr`` the run equals one without it."""
    from ndm.runs.checkpoint import load_checkpoint

    def run(name: str, **settings: object) -> tuple[dict, torch.nn.Module]:
        cfg = RunConfig(
            DataConfig("checkerboard", n_train=256, n_test=64),
            ModelConfig(hidden=16, depth=2),
            TrainConfig(steps=3, batch_size=32, checkpoint_every=3, warmup_steps=1, **settings),
            EvalConfig(),
        )
        model = train(cfg, tmp_path / name)
        return load_checkpoint(tmp_path / name / "checkpoint.pt"), model

    (single, _), (same, _) = run("single"), run("same", transform_lr=2e-3)
    faster, model = run("fast", transform_lr=1e-2)
    groups = faster["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [2e-3, 1e-2]
    n_phi = sum(1 for name, _ in model.named_parameters() if "transform" in name)
    assert len(groups[1]["params"]) == n_phi
    assert all(torch.equal(single["model"][k], same["model"][k]) for k in single["model"])
    assert not all(torch.equal(single["model"][k], faster["model"][k]) for k in single["model"])


# --- the gradient's signal against its minibatch noise ------------------------------------


def test_signal_to_noise_of_known_gradients() -> None:
    from ndm.analysis.diagnostics import signal_to_noise

    generator = torch.Generator().manual_seed(0)
    mean = torch.zeros(40).index_fill_(0, torch.tensor([0]), 3.0)
    noise = 0.5 * torch.randn(4000, 40, generator=generator)
    # ||m|| / sqrt(E||noise||^2) = 3 / (0.5 sqrt(40))
    assert signal_to_noise(mean + noise) == pytest.approx(3 / (0.5 * 40**0.5), rel=0.03)
    assert signal_to_noise(noise) < 0.02
    assert signal_to_noise(mean.expand(3, 40)) == float("inf")
    with pytest.raises(ValueError, match="K >= 2"):
        signal_to_noise(mean[None])


def test_gradient_snr_grows_as_the_root_of_the_batch_size() -> None:
    from ndm.analysis.diagnostics import gradient_signal_to_noise
    from ndm.runs.builders import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=32, depth=2, transform_init_scale=1.0), (2,))
    x = sample_data(16 * 256, seed=4).float()
    small = gradient_signal_to_noise(model, x[: 32 * 16].split(16))
    large = gradient_signal_to_noise(model, x.split(256))
    assert set(small) == {"snr_phi", "snr_theta"}
    # the noise of a minibatch mean falls as 1 / sqrt(B): 16 times the batch, 4 times the SNR
    for key in small:
        assert 2.5 < large[key] / small[key] < 6.5, (key, small[key], large[key])
    identity = build_model(ModelConfig(hidden=32, depth=2, transform="identity"), (2,))
    assert set(gradient_signal_to_noise(identity, x[:64].split(32))) == {"snr_theta"}
