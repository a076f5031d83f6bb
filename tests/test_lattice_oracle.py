"""Check 6: lattice data with the exact posterior, where the entropy is the answer.

The default discrete configuration (the log-SNR-linear schedule and the reverse variance of a
predictor of ``Var[x | z_t]``) must give a NELBO at or above the entropy and close to it for
every ``T``; the paper's (linear VP, posterior variance) must show its floor; the continuous
NELBO and the ODE NLL of the dequantised data must equal the entropy.
"""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from ndm.analysis.lattice_oracle import (
    LatticeOracle,
    centres,
    fit_endpoints,
    level_probabilities,
    make_transform,
    sample_levels,
    smoothed_nll,
)
from ndm.diffusion.decoders import CategoricalDecoder, GaussianDecoder
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import LinearVPSchedule, LogSNRLinearSchedule, make_schedule
from ndm.losses.likelihood import continuous_nelbo, dequantisation_offset, discrete_nelbo, ode_nll
from ndm.losses.objectives import discrete_diffusion_term, normal_kl, reconstruction_nll
from ndm.runs.config import ModelConfig

pytestmark = pytest.mark.usefixtures("single_thread")

DIMS = 4
BOUND_BITS = {1000: 0.05, 100: 0.25, 10: 1.0}  # NELBO - entropy, bits/dim
# examples: enough for a standard error of the excess well below its bound
EXAMPLES = {(10, 4): 512, (10, 17): 512, (10, 256): 512, (100, 4): 512, (100, 17): 512,
            (100, 256): 256, (1000, 4): 256, (1000, 17): 256, (1000, 256): 256}  # fmt: skip


def _excess_bits(total: torch.Tensor, levels: torch.Tensor, probs: torch.Tensor):
    """Mean and standard error of ``NELBO - (-log P(x))`` per example, bits/dim: the
    entropy's own spread over examples cancels."""
    excess = (total + probs.log()[levels].sum(1)) / (levels.shape[1] * math.log(2))
    return float(excess.mean()), float(excess.std()) / math.sqrt(excess.numel())


def _oracle_run(num_levels, skewed, affine, num_steps, schedule=None, variance=True):
    schedule = (schedule or make_schedule(ModelConfig().schedule)).double()
    transform = make_transform(affine, DIMS)
    probs = level_probabilities(num_levels, skewed)
    oracle = LatticeOracle(schedule, transform, probs, num_steps if variance else None)
    return NeuralDiffusion(schedule, transform), oracle, probs


def test_default_schedule_is_linear_in_log_snr():
    assert isinstance(make_schedule(ModelConfig().schedule), LogSNRLinearSchedule)
    assert ModelConfig(objective="discrete").learns_variance
    assert not ModelConfig(objective="continuous").learns_variance
    assert not ModelConfig(objective="discrete", reverse_variance="posterior").learns_variance


@pytest.mark.parametrize("num_steps", [10, 100, 1000])
@pytest.mark.parametrize("num_levels", [4, 17, 256])
@pytest.mark.parametrize("skewed", [False, True], ids=["uniform", "skewed"])
@pytest.mark.parametrize("affine", [False, True], ids=["identity", "affine"])
def test_default_discrete_nelbo_is_tight_and_never_below_the_entropy(
    num_steps, num_levels, skewed, affine
):
    process, oracle, probs = _oracle_run(num_levels, skewed, affine, num_steps)
    n = EXAMPLES[num_steps, num_levels]
    levels = sample_levels(probs, n, DIMS, seed=num_levels + num_steps)
    terms = discrete_nelbo(
        process,
        oracle,
        centres(num_levels)[levels],
        num_steps,
        CategoricalDecoder(num_levels),
        torch.Generator().manual_seed(1),
    )
    mean, stderr = _excess_bits(terms.total, levels, probs)
    assert mean <= BOUND_BITS[num_steps], (mean, stderr)
    assert mean >= -3 * stderr, (mean, stderr)  # a bound below the entropy is a bug
    assert stderr < BOUND_BITS[num_steps] / 3


def test_the_papers_formulation_keeps_its_floor():
    """Linear VP schedule and the posterior variance (eq. 10): thousands of bits/dim at
    ``T = 10`` on 8-bit data even with the exact posterior mean."""
    process, oracle, probs = _oracle_run(256, False, False, 10, LinearVPSchedule(), False)
    levels = sample_levels(probs, 256, DIMS, seed=0)
    x = centres(256)[levels]
    terms = discrete_nelbo(process, oracle, x, 10, CategoricalDecoder(256))
    assert _excess_bits(terms.total, levels, probs)[0] > 1000


def test_a_stratified_estimate_always_holds_the_dominant_last_step():
    """The paper's formulation at ``T = 1000`` puts most of the bound in the step to
    ``t = 0``. Summing the first block exactly, 50 strata estimate the sum of all 1000
    terms within 3 standard errors, with little more spread than the sum itself (a
    stratum drawn at random would hold that step for one example in 20)."""
    process, oracle, probs = _oracle_run(256, False, False, 1000, LinearVPSchedule(), False)
    levels = sample_levels(probs, 64, DIMS, seed=4)
    x = centres(256)[levels]
    exact = discrete_nelbo(process, oracle, x, 1000, CategoricalDecoder(256),
                           torch.Generator().manual_seed(6)).total  # fmt: skip
    estimate = discrete_nelbo(process, oracle, x, 1000, CategoricalDecoder(256),
                              torch.Generator().manual_seed(7), num_terms=50).total  # fmt: skip
    n = x.shape[0]
    stderr = [float(v.std()) / math.sqrt(n) for v in (exact, estimate)]
    assert abs(float(estimate.mean() - exact.mean())) < 3 * math.hypot(*stderr)
    assert stderr[1] < 1.5 * stderr[0]  # measured: 1.3
    assert _excess_bits(exact, levels, probs)[0] > 50  # the floor the last step makes


def test_the_optimal_variance_is_a_minimum_of_the_bound():
    """Scaling the oracle's reverse variance up or down, with the same noise, raises the
    NELBO: the variance is optimal, and no variance lowers the bound below its value."""
    process, oracle, probs = _oracle_run(17, True, True, 10)
    levels = sample_levels(probs, 2048, DIMS, seed=3)
    x = centres(17)[levels]

    def total(scale: float) -> float:
        class Scaled(torch.nn.Module):
            def predict(self, z, t):
                p = oracle.predict(z, t)
                return type(p)(p.mean, p.variance * scale)

        terms = discrete_nelbo(process, Scaled(), x, 10, CategoricalDecoder(17),
                               torch.Generator().manual_seed(5))  # fmt: skip
        return float(terms.total.mean())

    best = total(1.0)
    assert total(0.5) > best and total(2.0) > best
    assert (best + float(probs.log()[levels].sum(1).mean())) / (DIMS * math.log(2)) > 0


def _quadrature_terms(num_levels, skewed, num_steps):
    """Expected prior, KL and reconstruction terms of one dimension (identity ``F``, the
    log-SNR schedule, the exact mean and variance), by Gauss-Hermite quadrature in NumPy."""
    v = centres(num_levels).numpy()
    p = level_probabilities(num_levels, skewed).numpy()
    nodes, weights = np.polynomial.hermite_e.hermegauss(160)
    weights = weights / weights.sum()
    gamma = -13.3 + 18.3 * np.arange(num_steps + 1) / num_steps
    alpha, sigma = np.sqrt(1 / (1 + np.exp(gamma))), np.sqrt(1 / (1 + np.exp(-gamma)))
    prior = 0.5 * ((p * (alpha[-1] * v) ** 2).sum() + sigma[-1] ** 2 - 1 - np.log(sigma[-1] ** 2))
    kls = []
    for i in range(1, num_steps + 1):
        z = alpha[i] * v[:, None] + sigma[i] * nodes[None, :]
        logits = np.log(p) - (z[..., None] - alpha[i] * v) ** 2 / (2 * sigma[i] ** 2)
        post = np.exp(logits - logsumexp(logits, -1, keepdims=True))
        mean = (post * v).sum(-1)
        var = (post * v**2).sum(-1) - mean**2
        var_q = sigma[i - 1] ** 2 * -np.expm1(gamma[i - 1] - gamma[i])
        gain = alpha[i - 1] * -np.expm1(gamma[i - 1] - gamma[i])  # alpha_s - c alpha_t
        var_p = var_q + gain**2 * var
        kl = 0.5 * (
            var_q / var_p - 1 - np.log(var_q / var_p) + gain**2 * (v[:, None] - mean) ** 2 / var_p
        )
        kls.append(float((p[:, None] * weights * kl).sum()))
    z0 = alpha[0] * v[:, None] + sigma[0] * nodes[None, :]
    logits = -((z0[..., None] - alpha[0] * v) ** 2) / (2 * sigma[0] ** 2)
    log_post = logits - logsumexp(logits, -1, keepdims=True)
    picked = log_post[np.arange(num_levels), :, np.arange(num_levels)]
    return prior, np.array(kls), -float((p[:, None] * weights * picked).sum())


def test_each_term_matches_an_independent_quadrature():
    num_levels, num_steps, n = 17, 10, 20000
    process, oracle, probs = _oracle_run(num_levels, True, False, num_steps)
    prior_q, kls_q, rec_q = _quadrature_terms(num_levels, True, num_steps)
    levels = sample_levels(probs, n, 1, seed=7)
    x = centres(num_levels)[levels]
    generator = torch.Generator().manual_seed(8)
    torch.testing.assert_close(float(process.prior_kl(x).mean()), prior_q, rtol=0.02, atol=1e-4)
    rec = reconstruction_nll(process, x, CategoricalDecoder(num_levels), generator)
    assert abs(float(rec.mean()) - rec_q) < 4 * float(rec.std()) / math.sqrt(n) + 1e-6
    for i, expected in enumerate(kls_q, start=1):
        t = torch.full((n,), i / num_steps, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        term = discrete_diffusion_term(process, oracle, x, t - 1 / num_steps, t, noise)
        stderr = float(term.std()) / math.sqrt(n)
        assert abs(float(term.mean()) - expected) < 4 * stderr + 1e-4, (
            i,
            float(term.mean()),
            expected,
        )


def test_gaussian_kl_with_unequal_variances_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    gap = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    var_q = torch.rand(5, 1, 1, generator=g, dtype=torch.float64) + 0.1
    var_p = torch.rand(5, 3, 4, generator=g, dtype=torch.float64) + 0.1
    q = torch.distributions.Normal(gap, var_q.sqrt().expand_as(gap))
    p = torch.distributions.Normal(torch.zeros_like(gap), var_p.sqrt())
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(normal_kl(gap, var_q, var_p), expected)
    # equal variances: eq. (10)'s ||gap||^2 / (2 v)
    torch.testing.assert_close(
        normal_kl(gap, var_q, var_q), gap.pow(2).flatten(1).sum(1) / (2 * var_q.flatten())
    )


@pytest.mark.parametrize("num_levels", [4, 17, 256])
@pytest.mark.parametrize("skewed", [False, True], ids=["uniform", "skewed"])
def test_continuous_nelbo_equals_the_entropy(num_levels, skewed):
    process, oracle, probs = _oracle_run(num_levels, skewed, True, 1, variance=False)
    levels = sample_levels(probs, 1024, DIMS, seed=num_levels)
    x = centres(num_levels)[levels]
    terms = continuous_nelbo(process, oracle, x, 64, "uniform", CategoricalDecoder(num_levels),
                             torch.Generator().manual_seed(2))  # fmt: skip
    mean, stderr = _excess_bits(terms.total, levels, probs)
    assert abs(mean) < 3 * stderr + 2e-3, (mean, stderr)
    assert stderr < 0.1


@pytest.mark.parametrize("num_levels", [4, 17, 256])
@pytest.mark.parametrize("skewed", [False, True], ids=["uniform", "skewed"])
def test_ode_nll_of_the_dequantised_oracle_equals_the_entropy(num_levels, skewed):
    process, oracle, probs = _oracle_run(num_levels, skewed, False, 1, variance=False)
    oracle.dequantised = True
    levels = sample_levels(probs, 64, 2, seed=num_levels)
    u = torch.rand(levels.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = 2 * (levels + u) / num_levels - 1
    nll, _ = ode_nll(process, oracle, x, rtol=1e-6, atol=1e-6)
    # the model's density is the data's seen through z_0 / alpha_0 = x + (sigma_0 / alpha_0) eps
    zero = process.schedule(torch.zeros(1, dtype=torch.float64))
    exact = smoothed_nll(x, probs, float(zero.sigma / zero.alpha))
    # per example they differ by the mismatch of q(z_1) and the N(0, I) prior (about the
    # prior term of the NELBO), on average by less than 0.01 bits/dim
    assert abs(float((nll - exact).mean())) / (2 * math.log(2)) < 0.01

    def excess(nats):  # bits/dim above -log2 P(levels), per example
        return (
            nats / (2 * math.log(2))
            + dequantisation_offset(num_levels)
            + probs.log2()[levels].mean(1)
        )

    mean, stderr = float(excess(nll).mean()), float(excess(nll).std()) / 8
    if not skewed:  # a constant density: smoothing it changes nothing but the two ends
        assert abs(mean) < 0.01 + 2 * stderr, (mean, stderr)


def test_dequantised_discrete_nelbo_bounds_the_levels_tightly():
    """What image runs score: the dequantised data, the Gaussian decoder and the offset
    ``log2(L / 2)``; at or above the entropy and close to it."""
    num_levels, num_steps = 17, 100
    process, oracle, probs = _oracle_run(num_levels, True, False, num_steps)
    oracle.dequantised = True
    levels = sample_levels(probs, 256, DIMS, seed=11)
    x = 2 * (levels + torch.rand(levels.shape, dtype=torch.float64)) / num_levels - 1
    terms = discrete_nelbo(process, oracle, x, num_steps, GaussianDecoder(),
                           torch.Generator().manual_seed(6))  # fmt: skip
    total = terms.total + DIMS * math.log(num_levels / 2)  # the offset, in nats
    mean, stderr = _excess_bits(total, levels, probs)
    assert -3 * stderr <= mean <= BOUND_BITS[num_steps], (mean, stderr)


@pytest.mark.parametrize(("num_levels", "skewed"), [(17, False), (256, False), (256, True)])
def test_learned_endpoints_tighten_the_ten_step_bound_and_keep_it_above_the_entropy(
    num_levels, skewed
):
    levels = sample_levels(level_probabilities(num_levels, skewed), 512, DIMS, seed=7)

    def excess(process, oracle, probs):
        terms = discrete_nelbo(process, oracle, centres(num_levels)[levels].double(), 10,
                               CategoricalDecoder(num_levels), torch.Generator().manual_seed(1))  # fmt: skip
        return _excess_bits(terms.total, levels, probs)

    before, _ = excess(*_oracle_run(num_levels, skewed, False, 10))
    learned = make_schedule("log_snr", learn_endpoints=True)
    process, oracle, probs = _oracle_run(num_levels, skewed, False, 10, learned)
    ends = fit_endpoints(process, oracle, probs, 10, DIMS)
    after, stderr = excess(process, oracle, probs)
    # the same examples and noise: the gain is not the spread over examples
    assert after < before - 0.1, (before, after, ends)
    assert after >= -3 * stderr, (after, stderr)
    assert ends[0] > -13.3 and ends[1] < 5.0  # both ends move in: smaller steps in log-SNR
