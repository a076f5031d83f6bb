"""Per-example scores of :func:`ndm.evaluation.evaluate.evaluate` and differences paired by example."""

from __future__ import annotations

import math

import pytest
import torch

from ndm.data.loading import load_splits
from ndm.evaluation.evaluate import evaluate, paired_difference
from ndm.runs.builders import build_model
from ndm.runs.config import EvalConfig, ModelConfig


def _model(seed: int):
    """An untrained DDPM on points whose weights are drawn with ``seed``."""
    torch.manual_seed(seed)
    cfg = ModelConfig(transform="identity", objective="discrete", num_steps=10, hidden=8, depth=1)
    return build_model(cfg, (2,)).eval()


def testper_example_scores_average_to_the_reported_means_and_share_their_noise():
    splits = load_splits("checkerboard", 64, 24, 0)
    cfg = EvalConfig(n_eval=24, rtol=1e-3, atol=1e-3)
    ddpm = evaluate(_model(0), splits, cfg, per_example=True)
    scores = ddpm["per_example_bpd"]
    assert len(scores["nll"]) == len(scores["nelbo"]) == 24
    assert sum(scores["nelbo"]) / 24 == pytest.approx(ddpm["nelbo_bpd"], rel=1e-6)
    assert sum(scores["nll"]) / 24 == pytest.approx(ddpm["nll_bpd"], rel=1e-6)
    # the same model scored again: the same noise, so every paired difference is 0 (to
    # float32's rounding; another noise draw moves an example's NELBO by about 0.1)
    again = evaluate(_model(0), splits, cfg, per_example=True)["per_example_bpd"]
    assert paired_difference(again["nelbo"], scores["nelbo"]) == pytest.approx((0, 0), abs=1e-6)
    # another model: the paired mean is the difference of means, its error is smaller
    # than the two models' own errors combined as if they were independent
    other = evaluate(_model(1), splits, cfg, per_example=True)
    mean, stderr = paired_difference(other["per_example_bpd"]["nelbo"], scores["nelbo"])
    assert mean == pytest.approx(other["nelbo_bpd"] - ddpm["nelbo_bpd"], rel=1e-5)
    assert abs(mean) > 1e-3
    unpaired = math.hypot(other["nelbo_bpd_stderr"], ddpm["nelbo_bpd_stderr"])
    assert 0 < stderr < unpaired
    assert "per_example_bpd" not in evaluate(_model(0), splits, cfg, with_nll=False)


def test_paired_difference_closed_form_and_bad_lengths():
    mean, stderr = paired_difference([1.0, 2.0, 4.0], [0.0, 1.0, 1.0])
    assert mean == pytest.approx(5 / 3)
    # differences 1, 1, 3: sample variance 4/3, standard error sqrt(4/9)
    assert stderr == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal lengths of at least 2, got 2 and 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
