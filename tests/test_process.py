"""Posterior of eq. (8) and the drifts of eq. (11)-(13), against closed forms."""

import pytest
import torch

from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import CosineSchedule, LinearVPSchedule
from ndm.diffusion.transforms import IdentityTransform, LearnedTransform
from ndm.nets.mlp import TimeMLP

B = 64


def _learned_process(schedule=None) -> NeuralDiffusion:
    torch.manual_seed(0)
    transform = LearnedTransform(TimeMLP(2, hidden=32, depth=2)).double()
    return NeuralDiffusion((schedule or LinearVPSchedule()).double(), transform)


def _times(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=torch.float64)
    return t * torch.rand(B, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_posterior_preserves_marginals_exactly_in_moments(eta):
    """Eq. (1): if z_t ~ q(z_t|x), then z_s ~ q(z_s|z_t,x) has the moments of q(z_s|x)."""
    process = _learned_process()
    x = torch.randn(B, 2, dtype=torch.float64)
    s, t = _times()
    f_s = process.transform.value(x, s)
    mean_t = process.marginal(x, t, torch.zeros_like(x))[0]
    # The posterior mean is affine in z_t; read off its slope c from two evaluations.
    at_mean = process.posterior(mean_t, x, s, t, eta)
    shifted = process.posterior(mean_t + 1.0, x, s, t, eta)
    c = (shifted.mean - at_mean.mean)[:, 0]
    sched_s, sched_t = process.schedule(s), process.schedule(t)
    torch.testing.assert_close(at_mean.mean, sched_s.alpha[:, None] * f_s)
    torch.testing.assert_close(c**2 * sched_t.sigma**2 + at_mean.std**2, sched_s.sigma**2)


def test_posterior_preserves_marginals_monte_carlo():
    process = _learned_process()
    g = torch.Generator().manual_seed(5)
    n = 200_000
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64).expand(n, 2)
    s, t = torch.full((n,), 0.3, dtype=torch.float64), torch.full((n,), 0.6, dtype=torch.float64)
    z_t, _ = process.marginal(x, t, torch.randn(n, 2, generator=g, dtype=torch.float64))
    post = process.posterior(z_t, x, s, t, eta=0.7)
    z_s = post.mean + post.std[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    sched = process.schedule(s[:1])
    expected_mean = sched.alpha * process.transform.value(x[:1], s[:1])[0]
    torch.testing.assert_close(
        z_s.mean(0), expected_mean, atol=4 * float(sched.sigma) / n**0.5, rtol=0
    )
    torch.testing.assert_close(z_s.var(0), (sched.sigma**2).expand(2), rtol=0.02, atol=0)


def test_identity_posterior_is_ddpm_and_ddim():
    """F = x: eta = 1 is DDPM's q(z_s | z_t, x), eta = 0 the DDIM update."""
    process = NeuralDiffusion(LinearVPSchedule().double(), IdentityTransform())
    x, z = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    s, t = _times()
    a_s, a_t = process.schedule(s).alpha[:, None], process.schedule(t).alpha[:, None]
    v_s, v_t = process.schedule(s).sigma[:, None] ** 2, process.schedule(t).sigma[:, None] ** 2
    a_ts = a_t / a_s
    v_ts = v_t - a_ts**2 * v_s
    ddpm = process.posterior(z, x, s, t, eta=1.0)
    torch.testing.assert_close(ddpm.mean, a_s * v_ts / v_t * x + a_ts * v_s / v_t * z)
    torch.testing.assert_close(ddpm.std**2, (v_ts * v_s / v_t)[:, 0])
    ddim = process.posterior(z, x, s, t, eta=0.0)
    eps = (z - a_t * x) / v_t.sqrt()
    torch.testing.assert_close(ddim.mean, a_s * x + v_s.sqrt() * eps)
    assert float(ddim.std.abs().max()) == 0.0


@pytest.mark.parametrize("stochastic", [True, False])
def test_drift_equals_math_md_formula_for_learned_f(stochastic):
    """f = alpha dF/dt + r z - 1/2 (dsigma^2/dt - 2 r sigma^2 + g^2) s, with g = 0 for the ODE."""
    process = _learned_process(CosineSchedule())
    z, x_prime = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    _, t = _times()
    v = process.schedule(t)
    f, df = process.transform(x_prime, t)
    g2 = v.d_gamma * v.sigma**2 if stochastic else torch.zeros_like(t)
    score = (v.alpha[:, None] * f - z) / v.sigma[:, None] ** 2
    coef = 0.5 * (v.d_sigma2 - 2 * v.r * v.sigma**2 + g2)
    expected = v.alpha[:, None] * df + v.r[:, None] * z - coef[:, None] * score
    torch.testing.assert_close(process.drift(z, x_prime, t, stochastic), expected)


def test_identity_drift_is_ddpm_reverse_sde():
    """Eq. (5)-(6): with F = x the SDE drift is r z - g^2 s, g^2 = dsigma^2/dt - 2 r sigma^2."""
    process = NeuralDiffusion(LinearVPSchedule().double(), IdentityTransform())
    z, x_hat = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    _, t = _times()
    v = process.schedule(t)
    g2 = v.d_sigma2 - 2 * v.r * v.sigma**2
    score = (v.alpha[:, None] * x_hat - z) / v.sigma[:, None] ** 2
    expected = v.r[:, None] * z - g2[:, None] * score
    torch.testing.assert_close(process.drift(z, x_hat, t, stochastic=True), expected)
    ode = v.r[:, None] * z - 0.5 * g2[:, None] * score
    torch.testing.assert_close(process.drift(z, x_hat, t, stochastic=False), ode)


def test_prior_kl_closed_form():
    process = _learned_process()
    x = torch.randn(B, 2, dtype=torch.float64)
    one = torch.ones(B, dtype=torch.float64)
    v = process.schedule(one)
    mean = v.alpha[:, None] * process.transform.value(x, one)
    q = torch.distributions.Normal(mean, v.sigma[:, None].expand_as(mean))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(process.prior_kl(x), torch.distributions.kl_divergence(q, p).sum(1))
