"""The Gaussian-mixture oracle (ndm.analysis.mixture_oracle) against quadrature and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats

from ndm.analysis.mixture_oracle import GaussianMixture, MixtureOracle
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import LogSNRLinearSchedule
from ndm.diffusion.transforms import IdentityTransform
from ndm.models.ndm import NDM

TWO_MODES = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.4, 0.4])


def test_density_and_entropy_agree_with_scipy() -> None:
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    expected = 0.5 * stats.norm.pdf(x[:, 0], -2, 0.4) + 0.5 * stats.norm.pdf(x[:, 0], 2, 0.4)
    torch.testing.assert_close(TWO_MODES.log_prob(x), torch.tensor(expected).log())
    # one component: 0.5 log(2 pi e s^2); two far-apart modes add log 2
    single = GaussianMixture([1.0], [0.3], [0.7])
    assert single.entropy() == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 0.49), abs=1e-9)
    far = 0.5 * math.log(2 * math.pi * math.e * 0.16) + math.log(2)
    assert TWO_MODES.entropy() == pytest.approx(far, abs=1e-6)
    draws = TWO_MODES.sample(20000, 1, seed=0)
    assert -TWO_MODES.log_prob(draws).mean().item() == pytest.approx(TWO_MODES.entropy(), abs=0.03)


def test_posterior_moments_agree_with_quadrature() -> None:
    schedule = LogSNRLinearSchedule().double()
    oracle = MixtureOracle(schedule, TWO_MODES)
    z = torch.tensor([[-1.1], [0.2], [0.9]], dtype=torch.float64)
    t = torch.tensor([0.3, 0.55, 0.8], dtype=torch.float64)
    mean, var = oracle.moments(z, t)
    sched = schedule(t)
    for b in range(3):
        alpha, sigma = float(sched.alpha[b]), float(sched.sigma[b])

        def weight(x: float, power: int, b: int = b, alpha: float = alpha, sigma: float = sigma):
            prior = math.exp(float(TWO_MODES.log_prob(torch.tensor([[x]]))))
            return x**power * prior * stats.norm.pdf(float(z[b, 0]), alpha * x, sigma)

        peak = [float(z[b, 0]) / alpha]  # the likelihood's narrow peak, for quad to see
        moments = [
            integrate.quad(weight, -8, 8, args=(k,), points=peak, limit=400)[0] for k in range(3)
        ]
        assert float(mean[b, 0]) == pytest.approx(moments[1] / moments[0], abs=1e-7)
        second = moments[2] / moments[0]
        assert float(var[b, 0]) == pytest.approx(second - (moments[1] / moments[0]) ** 2, abs=1e-7)


@pytest.mark.parametrize(("steps", "slack"), [(1000, 0.05), (10, 0.5)])
def test_the_best_ddpm_bound_is_above_the_nll_and_tight_with_many_steps(
    steps: int, slack: float
) -> None:
    schedule = LogSNRLinearSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    model = NDM(process, MixtureOracle(schedule, TWO_MODES), "discrete", num_steps=steps)
    x = TWO_MODES.sample(2000, 1, seed=1)
    gap = model.nelbo(x, generator=torch.Generator().manual_seed(0)).total + TWO_MODES.log_prob(x)
    mean, stderr = gap.mean().item(), gap.std().item() / math.sqrt(gap.numel())
    assert -3 * stderr < mean < slack, (mean, stderr)
