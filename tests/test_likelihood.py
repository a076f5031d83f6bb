"""Check 4: exact likelihood on Gaussian data with an affine transform and the exact predictor."""

import math

import pytest
import torch

from ndm.diffusion.decoders import GaussianDecoder
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import LearnedVPSchedule, LinearVPSchedule
from ndm.diffusion.transforms import AffineTransform, IdentityTransform
from ndm.losses.likelihood import bits_per_dim, discrete_nelbo, ode_nll
from ndm.losses.objectives import continuous_diffusion_integrand, reconstruction_nll
from tests.exact_gaussian import MATRIX, SHIFT, ExactGaussianPredictor, exact_nll, sample_data


def _setup(affine: bool = True, schedule=None):
    # beta_max = 30 makes alpha_1 = 5e-4, so the N(0, I) prior matches q(z_1) to ~1e-3 nats.
    schedule = (schedule or LinearVPSchedule(beta_max=30.0)).double()
    transform = AffineTransform(MATRIX, SHIFT) if affine else IdentityTransform()
    return NeuralDiffusion(schedule, transform), ExactGaussianPredictor(schedule, transform)


def _true_nll(process: NeuralDiffusion, x: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros(1, dtype=torch.float64)
    v = process.schedule(zero)
    return exact_nll(x, float((v.sigma**2 / v.alpha**2).detach()))


@pytest.mark.parametrize("affine", [True, False])
def test_ode_nll_equals_exact_log_density(affine):
    process, predictor = _setup(affine)
    x = sample_data(64, seed=1)
    nll, nfe = ode_nll(process, predictor, x, rtol=1e-7, atol=1e-7)
    error = nll - _true_nll(process, x)
    assert float(error.abs().max()) < 1e-2
    assert abs(float(error.mean())) < 1e-3
    assert nfe > 0


def test_hutchinson_is_unbiased_for_the_exact_divergence():
    """One data point repeated: each row carries its own Rademacher probe along the path."""
    process, predictor = _setup()
    repeats = 512
    x = sample_data(1, seed=2).expand(repeats, 2).contiguous()
    exact, _ = ode_nll(process, predictor, x[:1], rtol=1e-6, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    estimates, _ = ode_nll(
        process, predictor, x, divergence="hutchinson", rtol=1e-6, atol=1e-6, generator=g
    )
    stderr = float(estimates.std()) / math.sqrt(repeats)
    assert float(estimates.std()) > 0
    assert abs(float(estimates.mean() - exact[0])) < 4 * stderr


def test_continuous_nelbo_is_above_and_close_to_the_exact_nll():
    """The diffusion term integrated over t by quadrature (t = u^3, midpoint rule in u), its
    inner expectation over (x, z_t) by Monte Carlo; with the exact predictor the bound is tight."""
    process, predictor = _setup()
    n, cells = 1024, 200
    x = sample_data(n, seed=3)
    g = torch.Generator().manual_seed(1)
    reconstruction = reconstruction_nll(process, x, GaussianDecoder(), g)
    total = process.prior_kl(x).mean() + reconstruction.mean()
    variance = float(reconstruction.var()) / n
    for k in range(cells):
        u = (k + 0.5) / cells
        t = torch.full((n,), u**3, dtype=torch.float64)
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
        values = continuous_diffusion_integrand(process, predictor, x, t, noise) * 3 * u**2 / cells
        total = total + values.mean()
        variance += float(values.var()) / n
    gap = float(total) - float(_true_nll(process, x).mean())
    # seeded, so deterministic; the bound holds within the Monte Carlo error either way
    assert abs(gap) < 4 * math.sqrt(variance)


def test_discrete_nelbo_is_above_the_exact_nll_and_tightens_like_one_over_t():
    process, predictor = _setup(schedule=LearnedVPSchedule(hidden=16))
    x = sample_data(256, seed=4)
    true = float(_true_nll(process, x).mean())
    gaps = [
        float(
            discrete_nelbo(
                process, predictor, x, steps, generator=torch.Generator().manual_seed(0)
            ).total.mean()
        )
        - true
        for steps in (4, 32, 256)
    ]
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < gaps[1] / 5


def test_stratified_discrete_nelbo_is_unbiased_for_the_exact_sum():
    process, predictor = _setup(schedule=LearnedVPSchedule(hidden=16))
    x = sample_data(4096, seed=5)
    generator = torch.Generator().manual_seed(2)
    exact = discrete_nelbo(process, predictor, x, 32, generator=generator).diffusion
    strata = discrete_nelbo(process, predictor, x, 32, generator=generator, num_terms=4).diffusion
    stderr = math.sqrt(float(exact.var() + strata.var()) / x.shape[0])
    assert abs(float(exact.mean() - strata.mean())) < 4 * stderr
    assert float(strata.var()) > float(exact.var())  # 4 of 32 terms: noisier, same mean
    with pytest.raises(ValueError, match="must divide"):
        discrete_nelbo(process, predictor, x[:2], 32, num_terms=5)


def test_bits_per_dim():
    nats = torch.tensor([2 * math.log(2) * 3])
    torch.testing.assert_close(bits_per_dim(nats, dims=2), torch.tensor([3.0]))
    torch.testing.assert_close(bits_per_dim(nats, dims=2, offset=7.0), torch.tensor([10.0]))


def test_unknown_divergence():
    process, predictor = _setup()
    with pytest.raises(ValueError, match="unknown divergence"):
        ode_nll(process, predictor, sample_data(2), divergence="bogus")
