"""Neural Flow Diffusion Models: the general Gaussian process, its special cases (NDM, DDPM,
VDM, flow matching), its drift and score, the oracle bound, the likelihood and the command
line."""

import math

import pytest
import torch
from torchdiffeq import odeint

from ndm.analysis.mixture_oracle import GaussianMixture, MixtureOracle
from ndm.cli import main
from ndm.diffusion.flow import (
    FlowDiffusion,
    LearnedVolatility,
    MeanScaleTransform,
    ScheduleVolatility,
)
from ndm.diffusion.gaussian import ode_velocity, reverse_drift, score
from ndm.diffusion.predictors import Predictor
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import FlowMatchingOTSchedule, make_schedule
from ndm.diffusion.transforms import IdentityTransform, LearnedTransform, Transform, per_example
from ndm.losses.likelihood import continuous_nelbo, ode_nll
from ndm.losses.objectives import (
    continuous_diffusion_integrand,
    curvature_penalty,
    straightness_penalty,
    velocity_matching_loss,
)
from ndm.models.ndm import NDM
from ndm.nets.mlp import TimeMLP
from ndm.runs.builders import build_model
from ndm.runs.config import ModelConfig, RunConfig, config_from_record, config_to_dict

pytestmark = pytest.mark.usefixtures("single_thread")


class ScheduleMeanScale(Transform):
    """``[alpha_t F(x, t), log sigma_t]``: NDM's process written as an NFDM transform."""

    def __init__(self, schedule, transform):
        super().__init__()
        self.schedule, self.inner = schedule, transform

    def value(self, x, t):
        sched = self.schedule(t)
        mean = per_example(sched.alpha, x) * self.inner.value(x, t)
        return torch.cat([mean, per_example(sched.sigma.log(), x).expand_as(mean)], 1)


def as_flow(schedule, transform):
    return FlowDiffusion(
        ScheduleMeanScale(schedule, transform), ScheduleVolatility(schedule), schedule
    )


def learned_transform(dim=2, seed=0):
    """A nonlinear F whose network is not at zero."""
    torch.manual_seed(seed)
    net = TimeMLP(dim, 32, 2, out_dim=dim, time_scale=3.0).double()
    return LearnedTransform(net)


def random_nfdm(schedule, dim=2, seed=1):
    """An NFDM whose mean, scale (depending on x) and volatility are far from their start."""
    torch.manual_seed(seed)
    net = TimeMLP(dim, 32, 2, out_dim=2 * dim, time_scale=3.0).double()
    volatility = LearnedVolatility(schedule, hidden=16).double()
    with torch.no_grad():
        volatility.net[-1].weight.normal_(0, 1.0)
    return FlowDiffusion(MeanScaleTransform(net, schedule), volatility, schedule)


def predictor(schedule, dim=2, seed=2):
    torch.manual_seed(seed)
    return Predictor(TimeMLP(dim, 32, 2).double(), schedule, "x")


def vdm_integrand(schedule, x, x_hat, t):
    """``1/2 gamma'(t) SNR(t) ||x - x_hat||^2``: the integrand for ``F = x``, any schedule."""
    sched = schedule(t)
    snr = sched.alpha**2 / sched.sigma**2
    return 0.5 * sched.d_gamma * snr * (x - x_hat).pow(2).sum(1)


def draws(n=64, dim=2, seed=3, t_low=0.02, t_high=0.98):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    t = t_low + (t_high - t_low) * torch.rand(n, generator=g, dtype=torch.float64)
    return x, t, torch.randn(n, dim, generator=g, dtype=torch.float64)


def test_the_nfdm_integrand_of_ndm_s_process_is_ndm_s_for_a_learned_nonlinear_f():
    schedule = make_schedule("linear")
    transform = learned_transform()
    ndm_process, flow = NeuralDiffusion(schedule, transform), as_flow(schedule, transform)
    x, t, noise = draws()
    pred = predictor(schedule)
    ndm_value = continuous_diffusion_integrand(ndm_process, pred, x, t, noise)
    flow_value = continuous_diffusion_integrand(flow, pred, x, t, noise)
    torch.testing.assert_close(flow_value, ndm_value, rtol=1e-10, atol=1e-10)
    # against math.md's closed form for a VP schedule:
    # ||alpha (dF(x) - dF(x_hat)) - gamma' alpha (F(x) - F(x_hat))||^2 / (2 sigma^2 gamma')
    sched = schedule(t)
    fx, dfx = transform(x, t)
    z = per_example(sched.alpha, x) * fx + per_example(sched.sigma, x) * noise
    fh, dfh = transform(pred(z, t), t)
    alpha, d_gamma = per_example(sched.alpha, x), per_example(sched.d_gamma, x)
    gap = alpha * (dfx - dfh) - d_gamma * alpha * (fx - fh)
    closed = gap.pow(2).sum(1) / (2 * sched.sigma**2 * sched.d_gamma)
    assert float(closed.detach().abs().max()) > 1.0  # a learned F that matters
    torch.testing.assert_close(flow_value, closed, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "schedule",
    [make_schedule("linear"), make_schedule("log_snr"), FlowMatchingOTSchedule(1e-3)],
    ids=["ddpm", "vdm", "flow_matching"],
)
def test_ddpm_vdm_and_flow_matching_are_nfdm_processes_with_the_vdm_integrand(schedule):
    flow = as_flow(schedule, IdentityTransform())
    x, t, noise = draws()
    pred = predictor(schedule)
    sched = schedule(t)
    z = per_example(sched.alpha, x) * x + per_example(sched.sigma, x) * noise
    expected = vdm_integrand(schedule, x, pred(z, t), t)
    got = continuous_diffusion_integrand(flow, pred, x, t, noise)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def assert_is_vdm(model, schedule):
    """An NFDM model's integrand and prior term equal VDM's (``F = x``) on ``schedule``, on
    :func:`draws`, which it returns."""
    vdm = NeuralDiffusion(schedule, IdentityTransform())
    x, t, noise = draws()
    got = continuous_diffusion_integrand(model.process, model.predictor, x, t, noise)
    expected = continuous_diffusion_integrand(vdm, model.predictor, x, t, noise)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.process.prior_kl(x), vdm.prior_kl(x))
    return x, t, noise


def test_an_untrained_nfdm_is_vdm_and_its_ends_are_the_schedule_s():
    schedule = make_schedule("log_snr")
    model = build_model(ModelConfig(process="nfdm", hidden=32, depth=2), (2,)).double()
    x, t, _ = assert_is_vdm(model, schedule)
    # whatever the network: q(z_0 | x) = N(alpha_0 x, sigma_0^2) and z_1 is the schedule's
    flow = random_nfdm(schedule)
    for time in (0.0, 1.0):
        end = torch.full((x.shape[0],), time, dtype=x.dtype)
        path, sched = flow.path(x, end), schedule(end)
        torch.testing.assert_close(path.mean, per_example(sched.alpha, x) * x)
        torch.testing.assert_close(path.std, per_example(sched.sigma, x).expand_as(x))
    middle = flow.path(x, t)
    assert float(middle.std.detach().std(0).mean()) > 1e-3  # the scale depends on x in between
    ratio = flow.log_scale_ratio(x, t)
    torch.testing.assert_close(ratio, (middle.std / per_example(schedule(t).sigma, x)).log())
    for time in (0.0, 1.0):  # the ends are the schedule's, and so is an untrained NFDM
        assert flow.log_scale_ratio(x, torch.full_like(t, time)).abs().max() < 1e-12
    assert model.process.log_scale_ratio(x, t).abs().max() < 1e-12


def test_an_nfdm_on_a_learned_schedule_is_vdm_on_it_and_its_bound_trains_the_schedule():
    cfg = ModelConfig(process="nfdm", schedule="learned", schedule_endpoints="learned",
                      hidden=32, depth=2)  # fmt: skip
    model = build_model(cfg, (2,)).double()
    schedule = model.process.schedule
    with torch.no_grad():  # a schedule away from its initial straight line, and other ends
        for param in schedule.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(4)))
    x, _, _ = assert_is_vdm(model, schedule)
    nelbo = model.loss_terms(x, torch.Generator().manual_seed(5)).total.mean()
    names, params = zip(*schedule.named_parameters(), strict=True)
    grads = dict(zip(names, torch.autograd.grad(nelbo, params), strict=True))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert all(float(grads[name].abs().max()) > 0 for name in ("endpoints.learned", "l2.weight"))


def test_path_derivatives_are_the_time_derivatives_of_mean_and_scale():
    flow = random_nfdm(make_schedule("log_snr"))
    x, t, _ = draws(t_low=0.1, t_high=0.9)
    h = 1e-6
    path = flow.path(x, t)
    ahead, behind = flow.path(x, t + h), flow.path(x, t - h)
    torch.testing.assert_close(
        path.d_mean, (ahead.mean - behind.mean) / (2 * h), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(path.d_std, (ahead.std - behind.std) / (2 * h), rtol=1e-6, atol=1e-6)


def test_the_score_is_the_gradient_of_the_log_density_and_the_drifts_combine_it():
    flow = random_nfdm(make_schedule("log_snr"))
    x, t, noise = draws()
    path = flow.path(x, t)
    z = path.sample(noise).requires_grad_(True)
    log_q = torch.distributions.Normal(path.mean, path.std).log_prob(z).sum()
    (grad,) = torch.autograd.grad(log_q, z)
    torch.testing.assert_close(score(path, z), grad)
    g2 = flow.g2(t)
    expected = ode_velocity(path, z) - 0.5 * per_example(g2, z) * score(path, z)
    torch.testing.assert_close(reverse_drift(path, z, g2), expected)


def test_the_conditional_ode_carries_z_0_onto_the_closed_form_marginal():
    """``dz/dt = f_ode(z, x, t)`` from ``z_0 = mu(x, 0) + sigma(x, 0) eps`` reaches
    ``mu(x, t) + sigma(x, t) eps`` at every ``t``, for an x-dependent learned scale."""
    flow = random_nfdm(make_schedule("log_snr"))
    x, _, eps = draws(n=16)
    times = torch.tensor([0.0, 0.3, 0.6, 0.9], dtype=torch.float64)

    def rhs(t, z):
        return ode_velocity(flow.path(x, t.expand(x.shape[0])), z)

    with torch.no_grad():
        start = flow.path(x, torch.zeros(16, dtype=torch.float64)).sample(eps)
        path = odeint(rhs, start, times, rtol=1e-10, atol=1e-10, method="dopri5")
        for k, time in enumerate(times):
            expected = flow.path(x, time.expand(16)).sample(eps)
            torch.testing.assert_close(path[k], expected, rtol=1e-7, atol=1e-7)


def test_the_forward_sde_with_a_learned_volatility_keeps_the_marginals():
    """``dz = [f_ode + g^2 / 2 s] dt + g dW`` by Euler-Maruyama from ``q(z_0 | x)``: the mean
    and standard deviation at several ``t`` are ``mu(x, t)`` and ``sigma(x, t)``, to the
    Monte Carlo error of 3000 particles each."""
    flow = random_nfdm(make_schedule("log_snr"), seed=4)
    g = torch.Generator().manual_seed(5)
    anchors = torch.tensor([[0.5, -1.0], [-1.5, 0.8]], dtype=torch.float64)
    n = 3000
    x = anchors.repeat_interleave(n, 0)
    steps, checks = 400, {100: 0.25, 200: 0.5, 300: 0.75}
    with torch.no_grad():
        zero = torch.zeros(x.shape[0], dtype=torch.float64)
        z = flow.path(x, zero).sample(torch.randn(x.shape, generator=g, dtype=torch.float64))
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((x.shape[0],), i * dt, dtype=torch.float64)
            path, g2 = flow.path(x, t), flow.g2(t)
            drift = ode_velocity(path, z) + 0.5 * per_example(g2, z) * score(path, z)
            noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
            z = z + drift * dt + per_example(g2.sqrt(), z) * math.sqrt(dt) * noise
            if i + 1 in checks:
                time = torch.full((2,), checks[i + 1], dtype=torch.float64)
                exact = flow.path(anchors, time)
                groups = z.view(2, n, 2)
                error = exact.std / math.sqrt(n)
                assert ((groups.mean(1) - exact.mean).abs() < 5 * error + 2e-3).all()
                rel = groups.std(1) / exact.std
                assert ((rel - 1).abs() < 0.05).all(), rel
    half = torch.tensor([0.5], dtype=torch.float64)
    with torch.no_grad():  # the learned volatility is not NDM's
        assert float(flow.g2(half)) != float(ScheduleVolatility(flow.schedule)(half))


@pytest.fixture(scope="module")
def mixture_case():
    mixture = GaussianMixture([0.3, 0.7], [-0.8, 0.6], [0.15, 0.25])
    schedule = make_schedule("linear")
    x = mixture.sample(256, 1, seed=6)
    return mixture, schedule, x


def fixed_vp_nfdm(schedule):
    """An NFDM fixed to a VP schedule: the library's mean-scale transform at zero, NDM's
    volatility."""
    net = TimeMLP(1, 8, 1, zero_init_output=True, out_dim=2).double()
    return FlowDiffusion(MeanScaleTransform(net, schedule), ScheduleVolatility(schedule), schedule)


def test_the_oracle_bound_of_an_nfdm_fixed_to_vp_is_ndm_s_and_above_the_nll(mixture_case):
    mixture, schedule, x = mixture_case
    oracle = MixtureOracle(schedule, mixture)
    flow, ndm_process = fixed_vp_nfdm(schedule), NeuralDiffusion(schedule, IdentityTransform())
    bounds = []
    for process in (flow, ndm_process):
        g = torch.Generator().manual_seed(7)
        bounds.append(continuous_nelbo(process, oracle, x, 64, generator=g).total)
    torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-9, atol=1e-9)
    nll = -mixture.log_prob(x)
    gap = bounds[0] - nll
    stderr = float(gap.std() / math.sqrt(len(gap)))
    assert float(gap.mean()) > -3 * stderr  # a bound below the exact NLL is a bug
    assert float(gap.mean()) < 0.02  # and with the exact posterior mean it is tight


def test_the_ode_nll_of_the_oracle_nfdm_is_the_exact_density_and_below_its_nelbo(mixture_case):
    mixture, schedule, x = mixture_case
    oracle, flow = MixtureOracle(schedule, mixture), fixed_vp_nfdm(schedule)
    x = x[:64]
    nll, _ = ode_nll(flow, oracle, x, rtol=1e-7, atol=1e-7)
    ndm_nll, _ = ode_nll(NeuralDiffusion(schedule, IdentityTransform()), oracle, x,
                         rtol=1e-7, atol=1e-7)  # fmt: skip
    torch.testing.assert_close(nll, ndm_nll, rtol=0, atol=1e-5)
    # exact up to the prior's mismatch: z_1 ~ N(alpha_1 x, sigma_1^2), alpha_1 = 6.6e-3
    torch.testing.assert_close(nll, -mixture.log_prob(x), rtol=0, atol=1e-2)
    nelbo = continuous_nelbo(flow, oracle, x, 64, generator=torch.Generator().manual_seed(8))
    gap = nelbo.total - nll
    assert float(gap.mean()) > -3 * float(gap.std()) / math.sqrt(len(gap))


def test_a_trained_nfdm_s_nll_and_nelbo_agree_and_stay_above_the_entropy():
    """A small NFDM trained briefly on 1-D mixture data: both likelihoods are finite, close to
    each other, and on held-out data neither mean is below the exact entropy by more than
    its Monte Carlo error (a cross-entropy cannot be)."""
    mixture = GaussianMixture([0.5, 0.5], [-0.7, 0.7], [0.3, 0.3])
    torch.manual_seed(9)
    model = build_model(ModelConfig(process="nfdm", hidden=32, depth=2), (1,))
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    data = mixture.sample(4096, 1, seed=10).float()
    g = torch.Generator().manual_seed(11)
    for _ in range(300):
        batch = data[torch.randint(0, len(data), (128,), generator=g)]
        loss = model.loss(batch, g).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test = mixture.sample(256, 1, seed=12).float()
    entropy = mixture.entropy()
    nll, _ = model.nll(test, rtol=1e-5, atol=1e-5)
    nelbo = model.nelbo(test, 32, torch.Generator().manual_seed(13)).total.detach()
    for value in (nll, nelbo):
        stderr = float(value.std() / math.sqrt(len(value)))
        assert float(value.mean()) > entropy - 3 * stderr
        assert float(value.mean()) < entropy + 0.3
    assert abs(float(nll.mean() - nelbo.mean())) < 0.15


def test_straightness_is_zero_on_straight_paths_and_the_acceleration_otherwise():
    """Flow matching's conditional paths ``(1 - t) x + (sigma_min + (1 - sigma_min) t) eps``
    are straight lines at constant speed: no acceleration. A VP path and a learned NFDM's
    curve, and the penalty is their squared acceleration by central differences."""
    x, _, _ = draws(n=32)
    straight = NeuralDiffusion(FlowMatchingOTSchedule(1e-3), IdentityTransform())
    penalty = straightness_penalty(straight, x, torch.Generator().manual_seed(14))
    assert float(penalty.max()) < 1e-20

    for process in (NeuralDiffusion(make_schedule("log_snr"), learned_transform()),
                    random_nfdm(make_schedule("log_snr"))):  # fmt: skip
        penalty = straightness_penalty(process, x, torch.Generator().manual_seed(15))
        g = torch.Generator().manual_seed(15)  # the same draws, by hand
        t = torch.rand(32, generator=g, dtype=x.dtype)
        eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
        h = 1e-4
        with torch.no_grad():
            z = [process.marginal(x, t + k * h, eps)[0] for k in (-1, 0, 1)]
        acceleration = (z[2] - 2 * z[1] + z[0]) / h**2
        torch.testing.assert_close(
            penalty.detach(), acceleration.pow(2).sum(1), rtol=1e-4, atol=1e-6
        )
        assert float(penalty.detach().min()) > 0


def test_an_nfdm_samples_with_ode_sde_and_ddim_and_refuses_ddpm():
    model = build_model(ModelConfig(process="nfdm", hidden=16, depth=1), (2,))
    g = torch.Generator().manual_seed(16)
    for sampler in ("ode", "sde", "ddim"):
        result = model.sample((32, 2), sampler, 8, g)
        assert result.sample.shape == (32, 2) and torch.isfinite(result.sample).all()
    with pytest.raises(ValueError, match="no DDPM posterior"):
        model.sample((4, 2), "ddpm", 4, g)
    with pytest.raises(ValueError, match="objective 'continuous'"):
        NDM(model.process, model.predictor, objective="discrete")


def test_the_straightness_weight_adds_exactly_its_penalty():
    cfg = ModelConfig(process="nfdm", hidden=16, depth=1, straightness_weight=0.5)
    model = build_model(cfg, (2,))
    x = torch.randn(16, 2)
    losses = model(x, torch.Generator().manual_seed(17))
    torch.testing.assert_close(losses["loss"], losses["nelbo"] + 0.5 * losses["straightness"])
    assert model.straightness_weight == 0.5 and "curvature" not in losses


@pytest.mark.parametrize("as_nfdm", [False, True])
def test_the_velocity_loss_of_flow_matching_s_process_is_conditional_flow_matching(as_nfdm):
    """With ``mu = (1 - t) x``, ``sigma = t + sigma_min (1 - t)`` the conditional velocity is
    ``(1 - sigma_min) eps - x``, and the model's is ``f_ode`` of ``x_hat``: the loss is
    flow matching's regression, whether the process is NDM's or an NFDM's."""
    sigma_min = 1e-2
    schedule = FlowMatchingOTSchedule(sigma_min)
    process = (
        as_flow(schedule, IdentityTransform())
        if as_nfdm
        else NeuralDiffusion(schedule, IdentityTransform())
    )
    net = predictor(schedule)
    x, _, _ = draws(n=32)
    g = torch.Generator().manual_seed(20)
    u = torch.rand(32, generator=g, dtype=x.dtype)
    loss = velocity_matching_loss(process, net, x, "uniform", g, u=u)
    g = torch.Generator().manual_seed(20)
    torch.rand(32, generator=g, dtype=x.dtype)  # u, drawn above
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = u[:, None]
    std = t + sigma_min * (1 - t)
    z = (1 - t) * x + std * eps
    x_hat = net(z, u)
    model_velocity = -x_hat + (1 - sigma_min) * (z - (1 - t) * x_hat) / std
    expected = ((1 - sigma_min) * eps - x - model_velocity).pow(2).sum(1)
    torch.testing.assert_close(loss, expected)


def test_the_curvature_penalty_is_zero_on_straight_generated_paths_and_the_acceleration_else():
    """For one point ``c`` the exact ``x_hat`` is ``c`` and flow matching's ODE carries each
    ``z_1`` along a straight line at constant speed: no acceleration. Otherwise the
    penalty is the squared derivative of the model's velocity along its own path, by
    central differences ``(v(z + h v, t + h) - v(z - h v, t - h)) / 2h``."""
    x, _, _ = draws(n=32)
    centre = torch.tensor([0.7, -1.2], dtype=x.dtype)

    def exact(z, t):
        return centre.expand_as(z)

    fm = NeuralDiffusion(FlowMatchingOTSchedule(1e-2), IdentityTransform())
    g = torch.Generator().manual_seed(21)
    assert float(curvature_penalty(fm, exact, centre.expand_as(x), g).max()) < 1e-20

    schedule = make_schedule("log_snr")
    for process in (NeuralDiffusion(schedule, learned_transform()), random_nfdm(schedule)):
        net = predictor(schedule)
        penalty = curvature_penalty(process, net, x, torch.Generator().manual_seed(22))
        g = torch.Generator().manual_seed(22)  # the same draws, by hand
        t = torch.rand(32, generator=g, dtype=x.dtype)
        eps = torch.randn(x.shape, generator=g, dtype=x.dtype)

        def velocity(z, time, process=process, net=net):
            return process.drift(z, net(z, time), time, stochastic=False)

        h = 1e-6  # the error falls as h^2: 2e-2, 2e-4, 2e-6 at h = 1e-4, 1e-5, 1e-6
        with torch.no_grad():
            z = process.marginal(x, t, eps)[0]
            v = velocity(z, t)
            acceleration = (velocity(z + h * v, t + h) - velocity(z - h * v, t - h)) / (2 * h)
        torch.testing.assert_close(
            penalty.detach(), acceleration.pow(2).sum(1), rtol=1e-4, atol=1e-6
        )
        assert float(penalty.min()) > 0


def test_nfdm_ot_trains_the_velocity_loss_plus_its_curvature_penalty_and_both_learn_the_process():
    """NFDM-OT's reverse process is deterministic: the velocity objective, the curvature
    penalty at its default weight, the schedule's volatility (for the SDE sampler and the
    reported bound); the penalty's gradient reaches the forward process and the predictor."""
    cfg = ModelConfig(process="nfdm_ot", schedule="fm_ot", parameterisation="x",
                      time_sampling="uniform", hidden=16, depth=1)  # fmt: skip
    assert (cfg.training_objective, cfg.curvature, cfg.straightness_weight) == (
        "velocity",
        1.0,
        0.0,
    )
    assert ModelConfig(process="nfdm").training_objective == "continuous"
    assert ModelConfig(process="nfdm").curvature == 0.0
    model = build_model(cfg, (2,))
    assert isinstance(model.process.volatility, ScheduleVolatility)
    assert not isinstance(model.process.volatility, LearnedVolatility)
    with torch.no_grad():  # a forward process away from the schedule's
        model.process.transform.net.out[-1].weight.normal_(0, 0.1)
    x = torch.randn(16, 2)
    losses = model(x, torch.Generator().manual_seed(23))
    assert "nelbo" not in losses
    torch.testing.assert_close(losses["loss"], losses["velocity"] + losses["curvature"])
    losses["curvature"].mean().backward()
    for network in (model.process.transform, model.predictor):
        grads = [p.grad for p in network.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    # the bound reported is the SDE sampler's, estimated with p(t) uniform in gamma
    nelbo = model.nelbo(x, 4, torch.Generator().manual_seed(24)).total
    expected = continuous_nelbo(model.process, model.predictor, x, 4, "gamma",
                                generator=torch.Generator().manual_seed(24)).total  # fmt: skip
    torch.testing.assert_close(nelbo, expected)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"transform": "identity"}, "belongs to process 'ndm'"),
        ({"objective": "discrete"}, "objective 'continuous' or 'velocity'"),
        ({"process": "nfdm_ot", "objective": "continuous"}, "objective 'velocity', not"),
        ({"transform_form": "interpolation"}, "transform_form shapes NDM's F"),
        ({"straightness_weight": -1.0}, "straightness_weight"),
        ({"curvature_weight": -1.0}, "curvature_weight"),
    ],
)
def test_settings_an_nfdm_cannot_take_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**({"process": "nfdm"} | settings))


def test_a_version_2_nfdm_ot_record_reads_as_the_nfdm_with_the_straightness_it_trained():
    """Version 2's ``nfdm_ot`` was NFDM with the straightness penalty at weight 1 (``None``
    stood for it); a version-2 run resumes as it was trained."""
    record = config_to_dict(RunConfig(model=ModelConfig(process="nfdm")))
    record["version"] = 2
    del record["model"]["curvature_weight"]
    record["model"] |= {"process": "nfdm_ot", "straightness_weight": None}
    model = config_from_record(record).model
    assert (model.process, model.training_objective, model.straightness_weight) == (
        "nfdm",
        "continuous",
        1.0,
    )
    assert model.curvature == 0.0
    record["model"]["process"] = "ndm"
    assert config_from_record(record).model.straightness_weight == 0.0


def test_nfdm_from_the_command_line_trains_resumes_evaluates_and_samples(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = (
        "--process nfdm_ot --schedule fm_ot --parameterisation x --steps 6 --hidden 16 "
        "--depth 1 --n-train 256 --n-test 64 "
        "--n-eval 32 --n-samples 64 --batch-size 32 --checkpoint-every 3 --log-every 3 "
        "--rtol 1e-3 --atol 1e-3 --nelbo-time-samples 2"
    ).split()
    assert main(["train", "--run-dir", str(run), *tiny]) == 0
    assert (run / "scale.png").read_bytes().startswith(b"\x89PNG")  # its learned scale
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "9"]) == 0
    assert main(["eval", str(run), "--n-eval", "32"]) == 0
    out = tmp_path / "ddim.png"
    assert main(["sample", str(run), "--sampler", "ddim", "--steps", "4", "--n", "16",
                 "--out", str(out)]) == 0  # fmt: skip
    assert torch.load(out.with_suffix(".pt"), weights_only=True).shape == (16, 2)
    capsys.readouterr()
    assert main(["sample", str(run), "--sampler", "ddpm", "--steps", "4", "--n", "16"]) == 1
    assert "no DDPM posterior" in capsys.readouterr().err
