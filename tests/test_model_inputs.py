"""The model's methods refuse data and options they cannot use, with a message naming them."""

import pytest
import torch

from ndm.builders import build_model, build_run_model
from ndm.config import DataConfig, ModelConfig, RunConfig


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
