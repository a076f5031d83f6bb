"""The model's methods refuse data and options they cannot use, with a message naming them."""

import math

import pytest
import torch

from ndm.runs.builders import build_model, build_run_model
from ndm.runs.config import DataConfig, ModelConfig, RunConfig


def _points_model():
    return build_model(ModelConfig(hidden=8, depth=1), (2,))


@pytest.mark.parametrize(
    ("x", "message"),
    [(torch.zeros(0, 2), "non-empty batch"), (torch.zeros(2), r"non-empty batch \[B, ...\]"),
     (torch.zeros(4, 2, dtype=torch.long), "floating point, got torch.int64")],
)  # fmt: skip
def test_bad_batches_are_refused_by_every_method(x, message):
    model = _points_model()
    for method in (model.loss, model.nll, model.nelbo, model.loss_terms):
        with pytest.raises(ValueError, match=message):
            method(x)


def test_bad_evaluation_options_are_refused():
    model = _points_model()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="num_probes .* must be positive"):
        model.nll(x, divergence="hutchinson", num_probes=0)
    with pytest.raises(ValueError, match="num_time_samples must be positive, got 0"):
        model.nelbo(x, num_time_samples=0)
    discrete = build_model(ModelConfig(hidden=8, depth=1, objective="discrete", num_steps=10), (2,))
    with pytest.raises(ValueError, match=r"num_terms must lie in 1..10, got 11"):
        discrete.nelbo(x, num_terms=11)


def test_an_image_model_refuses_pixel_values_outside_minus_one_one():
    cfg = RunConfig(DataConfig(dataset="digits"), ModelConfig(transform="identity"))
    model = build_run_model(cfg, (1, 8, 8), 17)
    levels = torch.randint(0, 17, (2, 1, 8, 8)).float()
    with pytest.raises(ValueError, match=r"image data lie in \[-1, 1\].*got \|x\| up to 1[0-7]"):
        model.loss(levels + 1)
    model.loss(levels / 8.5 - 1 + 1 / 17)  # the bin centres


def test_an_image_model_quantises_its_samples_and_scores_levels_in_one_call():
    from ndm.data.images import dequantise
    from ndm.losses.likelihood import bits_per_dim, dequantisation_offset

    cfg = RunConfig(DataConfig(dataset="digits"), ModelConfig(objective="discrete", num_steps=10))
    model = build_run_model(cfg, (1, 8, 8), 17)
    generator = torch.Generator().manual_seed(0)
    samples = model.sample((3, 1, 8, 8), "ddpm", 10, generator).sample
    levels = (samples + 1) * 17 / 2 - 0.5  # bin centres (2 k + 1) / L - 1 -> k
    assert torch.allclose(levels, levels.round(), atol=1e-5) and samples.abs().max() <= 1
    raw = model.sample((3, 1, 8, 8), "ddpm", 10, torch.Generator().manual_seed(0), quantise=False)
    assert not torch.allclose(raw.sample, samples)
    with pytest.raises(ValueError, match="quantise needs an image model"):
        _points_model().sample((2, 2), "ddpm", 2, quantise=True)

    data = torch.randint(0, 17, (4, 1, 8, 8))
    scores = model.image_bits_per_dim(data, torch.Generator().manual_seed(1), rtol=1e-2,
                                      atol=1e-2, divergence="hutchinson")  # fmt: skip
    # the same dequantisation by hand: the first draws of the same generator
    x = dequantise(data, 17, torch.Generator().manual_seed(1))
    nelbo = model.nelbo(x, generator=torch.Generator().manual_seed(2)).total
    by_hand = bits_per_dim(nelbo, 64, dequantisation_offset(17))
    assert scores["nll"].shape == scores["nelbo"].shape == (4,)
    assert torch.isfinite(scores["nll"]).all()
    assert scores["nelbo"].mean() == pytest.approx(float(by_hand.mean()), rel=0.05)
    with pytest.raises(ValueError, match=r"levels must be integers in 0..16"):
        model.image_bits_per_dim(data.float())


def test_an_nll_solve_past_its_step_limit_leaves_the_nll_out_with_the_reason():
    from ndm.data.loading import load_splits
    from ndm.evaluation.evaluate import evaluate
    from ndm.runs.config import EvalConfig

    splits = load_splits("checkerboard", 64, 16, 0)
    metrics = evaluate(_points_model(), splits, EvalConfig(n_eval=8, nll_max_steps=1))
    assert "nll" not in metrics and "within 1 dopri5 steps" in metrics["nll_failure"]
    assert math.isfinite(metrics["nelbo"])
