"""Discrete and continuous NELBO terms against their limits and the VDM special case."""

import math

import pytest
import torch
from scipy.integrate import quad

from ndm.diffusion.decoders import GaussianDecoder
from ndm.diffusion.predictors import Predictor
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import (
    CosineSchedule,
    FlowMatchingOTSchedule,
    LearnedVPSchedule,
    LinearVPSchedule,
)
from ndm.diffusion.timesampling import DEFAULT_TIME_SAMPLING, TIME_SAMPLINGS, sample_times
from ndm.diffusion.transforms import (
    IdentityTransform,
    LearnedTransform,
    SeparableTransform,
    Transform,
)
from ndm.losses.objectives import (
    continuous_diffusion_integrand,
    continuous_nelbo_terms,
    discrete_diffusion_term,
    discrete_nelbo_terms,
    kinetic_energy_penalty,
    simple_noise_loss,
)
from ndm.models.ndm import NDM
from ndm.nets.mlp import TimeMLP
from ndm.runs.builders import build_model
from ndm.runs.config import ModelConfig
from tests.exact_gaussian import COV, MEAN, ExactGaussianPredictor, sample_data

B = 32


def _model(transform_learned: bool = True, schedule=None):
    torch.manual_seed(0)
    schedule = (schedule or LinearVPSchedule()).double()
    transform = (
        LearnedTransform(TimeMLP(2, hidden=32, depth=2)).double()
        if transform_learned
        else IdentityTransform()
    )
    predictor = Predictor(TimeMLP(2, hidden=32, depth=2).double(), schedule, "eps")
    return NeuralDiffusion(schedule, transform), predictor


def test_discrete_term_tends_to_continuous_integrand_for_learned_nonlinear_f():
    """Check 2: T L_t -> the continuous integrand at the same (t, z_t), error shrinking ~ 1/T."""
    process, predictor = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = 0.1 + 0.8 * torch.rand(B, generator=g, dtype=torch.float64)
    continuous = continuous_diffusion_integrand(process, predictor, x, t, noise)
    worst, typical = [], []
    for steps in (100, 1000, 10_000):
        discrete = steps * discrete_diffusion_term(process, predictor, x, t - 1 / steps, t, noise)
        relative = ((discrete - continuous).abs() / continuous).detach()
        worst.append(float(relative.max()))
        typical.append(float(relative.median()))
    assert worst[2] < 1e-2 and typical[2] < 1e-3
    assert typical[0] > 5 * typical[1] > 25 * typical[2]
    assert worst[0] > worst[1] > worst[2]


def test_identity_continuous_integrand_is_vdm_loss():
    """Check 3: F = x gives 1/2 gamma' SNR ||x - x_hat||^2 = 1/2 gamma' ||eps - eps_hat||^2."""
    process, predictor = _model(transform_learned=False, schedule=CosineSchedule())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    v = process.schedule(t)
    z = v.alpha[:, None] * x + v.sigma[:, None] * noise
    x_hat = predictor(z, t)
    eps_hat = predictor.net(z, t)
    expected = 0.5 * v.d_gamma * torch.exp(-v.gamma) * (x - x_hat).pow(2).sum(1)
    got = continuous_diffusion_integrand(process, predictor, x, t, noise)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, 0.5 * v.d_gamma * (noise - eps_hat).pow(2).sum(1))


def test_identity_discrete_term_is_vdm_discrete_loss():
    """Check 3: F = x gives L_t = 1/2 (SNR(s) - SNR(t)) ||x - x_hat||^2."""
    process, predictor = _model(transform_learned=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.95 * torch.rand(B, generator=g, dtype=torch.float64)
    s = t - 0.05
    v_s, v_t = process.schedule(s), process.schedule(t)
    x_hat = predictor(v_t.alpha[:, None] * x + v_t.sigma[:, None] * noise, t)
    snr_gap = torch.exp(-v_s.gamma) - torch.exp(-v_t.gamma)
    expected = 0.5 * snr_gap * (x - x_hat).pow(2).sum(1)
    torch.testing.assert_close(
        discrete_diffusion_term(process, predictor, x, s, t, noise), expected
    )


def test_gaussian_reconstruction_closed_form():
    x, z0 = torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64)
    alpha0, sigma0 = (
        torch.full((B,), 0.99, dtype=torch.float64),
        torch.full((B,), 0.05, dtype=torch.float64),
    )
    dist = torch.distributions.Normal(z0 / 0.99, 0.05 / 0.99)
    expected = -dist.log_prob(x).sum(1)
    torch.testing.assert_close(GaussianDecoder().nll(x, z0, alpha0, sigma0), expected)


@pytest.mark.parametrize("method", TIME_SAMPLINGS)
def test_time_sampling_gives_unbiased_estimates(method):
    """E_p[h(t) / p(t)] = int_0^1 h(t) dt for each density, on a learned schedule too."""
    torch.manual_seed(0)
    for schedule in (LinearVPSchedule().double(), LearnedVPSchedule(hidden=8).double()):
        like = torch.zeros(1, dtype=torch.float64)
        g = torch.Generator().manual_seed(4)
        t, density = sample_times(schedule, 400_000, method, like, g)
        assert bool(((t >= 0) & (t <= 1)).all())

        def h(tt):
            return torch.as_tensor(tt, dtype=torch.float64).sin() + 2 * torch.as_tensor(tt) ** 2

        estimate = (h(t) / density).mean()
        exact, _ = quad(lambda tt: float(h(tt)), 0, 1)
        stderr = float((h(t) / density).std()) / 400_000**0.5
        assert abs(float(estimate) - exact) < 5 * stderr + 1e-9


def test_importance_density_is_proportional_to_inverse_g2():
    schedule = LinearVPSchedule().double()
    like = torch.zeros(1, dtype=torch.float64)
    t, density = sample_times(schedule, 1000, "importance", like, torch.Generator().manual_seed(0))
    cell_mid = ((t * 1000).floor() + 0.5) / 1000
    ratio = density * schedule(cell_mid).g2
    torch.testing.assert_close(ratio, ratio.mean().expand(1000))
    mass = 1 / schedule(torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)).g2
    torch.testing.assert_close(ratio.mean(), 1000 / mass.sum())


def test_simple_loss_refuses_learned_transform_and_equals_noise_mse_for_identity():
    process, predictor = _model(transform_learned=True)
    x = torch.randn(B, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="collapses a learned transform"):
        simple_noise_loss(process, predictor, x)
    with pytest.raises(ValueError, match="collapses a learned transform"):
        NDM(process, predictor, objective="simple")
    process, predictor = _model(transform_learned=False)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    loss = simple_noise_loss(process, predictor, x, g1)
    t = torch.rand(B, generator=g2, dtype=torch.float64)
    noise = torch.randn(B, 2, generator=g2, dtype=torch.float64)
    v = process.schedule(t)
    eps_hat = predictor.net(v.alpha[:, None] * x + v.sigma[:, None] * noise, t)
    torch.testing.assert_close(loss, (noise - eps_hat).pow(2).sum(1))


def test_continuous_objective_trains_both_networks_and_the_schedule():
    schedule = LearnedVPSchedule(hidden=8)
    torch.manual_seed(0)
    transform = LearnedTransform(TimeMLP(2, hidden=16, depth=1, zero_init_output=True))
    predictor = Predictor(TimeMLP(2, hidden=16, depth=1), schedule)
    model = NDM(NeuralDiffusion(schedule, transform), predictor)
    model.loss(torch.randn(B, 2)).mean().backward()
    for module in (schedule, transform, predictor.net):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("method", ["importance", "gamma"])
def test_quantile_stratified_times_integrate_accurately(method):
    """Times at the quantiles u_k = (k + U_k) / K of p(t) estimate int h with O(1/K^1.5) error."""
    schedule = LinearVPSchedule().double()
    like = torch.zeros(1, dtype=torch.float64)
    strata = 2000
    g = torch.Generator().manual_seed(5)
    u = (
        torch.arange(strata, dtype=torch.float64)
        + torch.rand(strata, generator=g, dtype=torch.float64)
    ) / strata
    t, density = sample_times(schedule, strata, method, like, u=u)
    assert bool((t.diff() >= 0).all())
    estimate = float((torch.cos(3 * t) / density).mean())
    assert estimate == pytest.approx(math.sin(3) / 3, abs=1e-3)


@pytest.mark.parametrize("method", TIME_SAMPLINGS)
def test_times_stay_below_one_where_the_fm_ot_integrand_is_finite(method):
    """``u = 1`` (or a quotient rounding up to 1) would give ``t = 1``, where ``fm_ot`` has
    ``alpha = 0`` and the integrand is NaN: drawn times stay below 1, ``t = 0`` is harmless."""
    for dtype in (torch.float32, torch.float64):
        like = torch.zeros(1, dtype=dtype)
        below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
        for schedule in (FlowMatchingOTSchedule(), LinearVPSchedule(), CosineSchedule()):
            t, density = sample_times(schedule, 4, method, like, u=torch.ones(4, dtype=dtype))
            assert bool((t < 1).all()), t
            assert bool((density > 0).all()) and bool(torch.isfinite(density).all())
            if method in ("uniform", "stratified"):
                assert torch.equal(t, below_one.expand(4))
    torch.manual_seed(0)
    schedule = FlowMatchingOTSchedule()
    process = NeuralDiffusion(schedule, LearnedTransform(TimeMLP(2, hidden=8, depth=1)))
    x = torch.randn(4, 2)
    predictor = Predictor(TimeMLP(2, hidden=8, depth=1), schedule, "x")
    for u in (torch.ones(4), torch.zeros(4)):
        g = torch.Generator().manual_seed(1)
        terms = continuous_nelbo_terms(process, predictor, x, method, generator=g, u=u)
        for name, value in terms.as_dict().items():
            assert bool(torch.isfinite(value).all()), (float(u[0]), name, value)


@pytest.mark.parametrize("method", ["importance", "gamma"])
def test_float32_tabulated_times_reach_every_cell(method):
    """The last cells of ``p(t)`` keep their mass in float32 too: ``u`` just below 1 lands in
    the last cell, and the float32 quantiles match the float64 ones."""
    u = torch.tensor([0.5, 0.999, 1 - 2**-20, 1 - 2**-24])
    for schedule in (FlowMatchingOTSchedule(), LinearVPSchedule()):
        t32, p32 = sample_times(schedule, 4, method, torch.zeros(1), u=u)
        t64, p64 = sample_times(schedule.double(), 4, method, torch.zeros(1).double(), u=u.double())
        assert float(t32[-1]) > 1 - 1e-3, t32
        torch.testing.assert_close(t32.double(), t64, rtol=0, atol=1e-4)
        torch.testing.assert_close(p32.double(), p64, rtol=1e-3, atol=0)


def test_kinetic_penalty_estimates_the_exact_gaussian_flow_energy(single_thread):
    """F = x, Gaussian data N(mu, Sigma), exact predictor: the probability-flow velocity is
    v = alpha' mu + V diag(c' / c) V^T (z - alpha mu) with c_k = sqrt(alpha^2 lam_k + sigma^2),
    so E ||v(z_t, t)||^2 = alpha'^2 ||mu||^2 + sum_k c'_k^2 and the penalty's mean over
    t ~ U[0, 1] is its integral over [0, 1]."""
    schedule = CosineSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    x = sample_data(20_000, seed=3)
    penalty = kinetic_energy_penalty(process, predictor, x, torch.Generator().manual_seed(4))
    lam = torch.linalg.eigvalsh(COV)

    def energy(t: float) -> float:
        v = schedule(torch.tensor([t], dtype=torch.float64))
        c = (v.alpha**2 * lam + v.sigma**2).sqrt()
        dc = (v.alpha * v.d_alpha * lam + v.sigma * v.d_sigma) / c
        return float(v.d_alpha**2 * MEAN.pow(2).sum() + dc.pow(2).sum())

    exact = quad(energy, 0, 1, limit=200)[0]
    stderr = float(penalty.std()) / math.sqrt(penalty.numel())
    assert abs(float(penalty.mean()) - exact) < 5 * stderr, (float(penalty.mean()), exact, stderr)


def test_kinetic_weight_adds_exactly_the_weighted_penalty_to_the_loss(single_thread):
    process, predictor = _model()
    x = torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    weight = 0.25
    plain = NDM(process, predictor).loss(x, torch.Generator().manual_seed(9))
    penalised = NDM(process, predictor, kinetic_weight=weight)
    losses = penalised(x, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    continuous_nelbo_terms(process, predictor, x, "importance", generator=g)  # the same draws
    penalty = kinetic_energy_penalty(process, predictor, x, g)
    torch.testing.assert_close(losses["kinetic"], penalty)
    torch.testing.assert_close(losses["loss"] - plain, weight * penalty)
    torch.testing.assert_close(losses["nelbo"], plain)  # the NELBO leaves the penalty out
    parts = ("prior", "diffusion", "reconstruction")
    torch.testing.assert_close(sum(losses[k] for k in parts), losses["nelbo"])
    torch.testing.assert_close(
        penalised.loss(x, torch.Generator().manual_seed(9)), plain + weight * penalty
    )
    unpenalised = NDM(process, predictor)(x)
    assert "kinetic" not in unpenalised and unpenalised["nelbo"] is unpenalised["loss"]
    assert build_model(ModelConfig(kinetic_weight=weight), (2,)).kinetic_weight == weight
    with pytest.raises(ValueError, match="kinetic_weight must be non-negative"):
        NDM(process, predictor, kinetic_weight=-1.0)
    with pytest.raises(ValueError, match="kinetic_weight must be non-negative"):
        ModelConfig(kinetic_weight=-1.0)


class _ValueOnly(Transform):
    """A transform seen only through ``F``: ``dF/dt`` by jvp, one network call per time."""

    def __init__(self, inner: Transform):
        super().__init__()
        self.inner = inner

    def value(self, x, t):
        return self.inner.value(x, t)


@pytest.mark.parametrize("objective", ["discrete", "continuous"])
def test_separable_transform_gives_the_nelbo_of_its_function(objective: str):
    """The separable transform's shared network call and closed-form ``dF/dt`` leave every
    NELBO term equal to the generic evaluation of the same ``F``."""
    _, predictor = _model()
    torch.manual_seed(1)
    separable = SeparableTransform(TimeMLP(2, hidden=32, depth=2, out_dim=8), 4).double()
    x = sample_data(B, seed=2)
    terms = []
    for transform in (separable, _ValueOnly(separable)):
        process = NeuralDiffusion(predictor.schedule, transform)
        generator = torch.Generator().manual_seed(3)
        if objective == "discrete":
            terms.append(discrete_nelbo_terms(process, predictor, x, 10, generator=generator))
        else:
            terms.append(continuous_nelbo_terms(process, predictor, x, generator=generator))
    torch.testing.assert_close(terms[0].as_dict(), terms[1].as_dict())
    # the terms from F asked for at once equal those that evaluate F where they need it
    torch.testing.assert_close(terms[0].prior, process.prior_kl(x))
    generator = torch.Generator().manual_seed(3)
    if objective == "discrete":
        t = torch.randint(1, 11, (B,), generator=generator).double() / 10
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        diffusion = 10 * discrete_diffusion_term(process, predictor, x, t - 0.1, t, noise)
    else:
        t, density = sample_times(predictor.schedule, B, DEFAULT_TIME_SAMPLING, x, generator)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        diffusion = continuous_diffusion_integrand(process, predictor, x, t, noise) / density
    torch.testing.assert_close(terms[0].diffusion, diffusion)
    identity_prior = NeuralDiffusion(predictor.schedule, IdentityTransform()).prior_kl(x)
    assert terms[0].prior.sub(identity_prior).abs().max() > 1e-4


def test_predictor_of_the_variance_splits_its_channels_and_checks_them():
    schedule = LinearVPSchedule()
    z, t = torch.randn(3, 2), torch.rand(3)
    predictor = Predictor(TimeMLP(2, hidden=8, depth=1, out_dim=4), schedule, "eps", variance=True)
    prediction = predictor.predict(z, t)
    out = predictor.net(z, t)
    sched = schedule(t)
    torch.testing.assert_close(
        prediction.mean, (z - sched.sigma[:, None] * out[:, :2]) / sched.alpha[:, None]
    )
    torch.testing.assert_close(prediction.variance, out[:, 2:].exp() * sched.sigma[:, None] ** 2)
    torch.testing.assert_close(predictor(z, t), prediction.mean)
    short = Predictor(TimeMLP(2, hidden=8, depth=1), schedule, "eps", variance=True)
    with pytest.raises(ValueError, match="needs 4 output channels"):
        short(z, t)
    with pytest.raises(ValueError, match="reverse_variance 'learned'"):
        ModelConfig(objective="continuous", reverse_variance="learned")


def test_one_default_time_sampling_everywhere():
    import inspect

    from ndm.losses.likelihood import continuous_nelbo
    from ndm.models.ndm import NDM
    from ndm.runs.config import ModelConfig

    defaults = {
        inspect.signature(fn).parameters["time_sampling"].default
        for fn in (NDM.__init__, continuous_nelbo, continuous_nelbo_terms)
    }
    assert defaults == {ModelConfig().time_sampling} == {DEFAULT_TIME_SAMPLING}
