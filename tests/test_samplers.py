"""Samplers: ODE solver order on a flow with a known solution, and sample moments on Gaussian data."""

import math

import pytest
import torch

from ndm.diffusion.predictors import Prediction
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import CosineSchedule, LinearVPSchedule
from ndm.diffusion.transforms import AffineTransform, IdentityTransform
from ndm.sampling.samplers import SAMPLERS, get_sampler, time_grid
from tests.exact_gaussian import COV, MATRIX, MEAN, SHIFT, ExactGaussianPredictor


def _exact_flow_endpoint(schedule, z1: torch.Tensor) -> torch.Tensor:
    """With F = x and Gaussian data, the probability-flow map is affine: all covariances
    ``C_t = alpha^2 Sigma + sigma^2 I`` share eigenvectors, so
    ``z_0 = m_0 + C_0^{1/2} C_1^{-1/2} (z_1 - m_1)``, returned in data scale ``z_0 / alpha_0``."""
    ends = schedule(torch.tensor([0.0, 1.0], dtype=torch.float64))
    lam, vec = torch.linalg.eigh(COV)
    scale0 = (ends.alpha[0] ** 2 * lam + ends.sigma[0] ** 2).sqrt()
    scale1 = (ends.alpha[1] ** 2 * lam + ends.sigma[1] ** 2).sqrt()
    linear = vec @ torch.diag(scale0 / scale1) @ vec.T
    z0 = ends.alpha[0] * MEAN + (z1 - ends.alpha[1] * MEAN) @ linear.T
    return z0 / ends.alpha[0]


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_ode_solvers_show_their_order(method, order):
    schedule = CosineSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    z1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = _exact_flow_endpoint(schedule, z1)
    ode = get_sampler("ode")
    errors = []
    for steps in (20, 40, 80):
        result = ode(process, predictor, z1, time_grid(steps, dtype=torch.float64), method=method)
        errors.append(float((result.sample - exact).abs().max()))
        stages = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
        assert result.nfe == stages * steps
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(rate - order) < 0.3 for rate in rates), rates


def test_adaptive_ode_matches_exact_flow():
    schedule = CosineSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    z1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = get_sampler("ode")(
        process, predictor, z1, time_grid(1, dtype=torch.float64), rtol=1e-8, atol=1e-8
    )
    torch.testing.assert_close(result.sample, _exact_flow_endpoint(schedule, z1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "name,steps,options",
    [
        ("ddpm", 200, {}),
        ("ddim", 200, {}),
        ("ddim", 100, {"eta": 0.5}),
        ("sde", 500, {}),
        ("ode", 1, {}),
    ],
)
def test_samplers_reproduce_gaussian_data_with_exact_predictor_and_affine_f(name, steps, options):
    schedule = LinearVPSchedule().double()
    transform = AffineTransform(MATRIX, SHIFT)
    process = NeuralDiffusion(schedule, transform)
    predictor = ExactGaussianPredictor(schedule, transform)
    n = 20_000
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    grid = time_grid(steps, dtype=torch.float64)
    result = get_sampler(name)(process, predictor, z1, grid, generator=g, **options)
    sample = result.sample
    assert result.nfe >= steps
    torch.testing.assert_close(sample.mean(0), MEAN, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(sample.T), COV, atol=0.06, rtol=0)


def test_trajectory_and_nfe_reporting():
    schedule = LinearVPSchedule()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    z1 = torch.randn(8, 2)
    for name in ("ddpm", "ddim", "sde"):
        result = get_sampler(name)(process, predictor, z1, time_grid(10), trajectory=True)
        assert result.nfe == 10 and result.trajectory.shape == (11, 8, 2)
        assert torch.equal(result.trajectory[0], z1)


def test_unknown_sampler_and_bad_grid():
    assert set(SAMPLERS) == {"ddpm", "ddim", "sde", "ode"}
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*choose one of"):
        get_sampler("euler")
    schedule = LinearVPSchedule()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    with pytest.raises(ValueError, match="end at t = 0"):
        get_sampler("ddpm")(process, predictor, torch.randn(2, 2), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="num_steps must be at least 1"):
        time_grid(0)
    with pytest.raises(ValueError, match="unknown ODE method"):
        get_sampler("ode")(process, predictor, torch.randn(2, 2), time_grid(2), method="rk45")
    for tolerances in ({"rtol": 0.0}, {"atol": -1e-3}, {"rtol": math.inf}):
        with pytest.raises(ValueError, match="tolerances must be positive and finite"):
            get_sampler("ode")(process, predictor, torch.randn(2, 2), time_grid(2), **tolerances)


class _ConstantVariance(torch.nn.Module):
    """``x_hat = 0`` and ``Var[x | z_t] = 0.3`` per dimension, whatever ``z``."""

    def predict(self, z, t):
        return Prediction(torch.zeros_like(z), torch.full_like(z, 0.3))

    def forward(self, z, t):
        return torch.zeros_like(z)


def test_ancestral_sampler_draws_with_the_predicted_reverse_variance():
    """One step ``t = 0.05 -> 0`` from a fixed ``z_t``: ``z_0`` spreads with ``sigma_tilde^2 +
    (alpha_s - c alpha_t)^2 v_hat`` under ``ddpm``, with ``eta^2 sigma_tilde^2`` under DDIM."""
    schedule = LinearVPSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    z = torch.full((40000, 1), 0.5, dtype=torch.float64)
    grid = torch.tensor([0.05, 0.0], dtype=torch.float64)
    s, t = grid[1:], grid[:1]
    learned = process.reverse_variance(s, t, torch.full((1, 1), 0.3, dtype=torch.float64), z[:1])
    posterior = process.reverse_variance(s, t, None, z[:1])
    assert float(learned) > 2 * float(posterior)
    alpha0 = float(schedule(s).alpha)
    for name, options, variance in (
        ("ddpm", {}, float(learned)),
        ("ddim", {"eta": 0.5}, 0.25 * float(posterior)),
    ):
        generator = torch.Generator().manual_seed(0)
        result = get_sampler(name)(
            process, _ConstantVariance(), z, grid, generator=generator, **options
        )
        spread = float((result.sample * alpha0).var())
        assert spread == pytest.approx(variance, rel=0.03), name


def test_ddim_refuses_eta_outside_the_unit_interval():
    schedule = LinearVPSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    z = torch.zeros(2, 1, dtype=torch.float64)
    for eta in (1.5, float("inf"), -0.1):
        with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
            get_sampler("ddim")(
                process, _ConstantVariance(), z, time_grid(2, dtype=torch.float64), eta=eta
            )


@pytest.mark.parametrize(("name", "option"), [("ode", "rtoll"), ("ddim", "etaa"), ("ddpm", "eta"),
                                              ("sde", "method")])  # fmt: skip
def test_an_option_a_sampler_does_not_take_is_refused(name, option):
    schedule = LinearVPSchedule()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    with pytest.raises(TypeError, match=option):
        get_sampler(name)(process, predictor, torch.randn(2, 2), time_grid(2), **{option: 1.0})


def test_the_sde_sampler_starts_at_t_1_of_flow_matching():
    """alpha_1 = 0 makes g infinite at t = 1: the first step is the ancestral one, and the
    samples have the data's moments."""
    from ndm.diffusion.schedules import FlowMatchingOTSchedule

    schedule = FlowMatchingOTSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(4000, 2, generator=generator, dtype=torch.float64)
    result = get_sampler("sde")(process, predictor, z1, time_grid(200, dtype=torch.float64),
                                generator=generator)  # fmt: skip
    assert bool(torch.isfinite(result.sample).all())
    assert torch.allclose(result.sample.mean(0), MEAN, atol=0.08)
    assert torch.allclose(result.sample.T.cov(), COV, atol=0.15)


def test_an_eps_predictor_is_refused_where_alpha_1_is_zero():
    from ndm.diffusion.predictors import Predictor
    from ndm.diffusion.schedules import FlowMatchingOTSchedule

    with pytest.raises(ValueError, match="alpha_1 = 0: use output 'x'"):
        Predictor(torch.nn.Identity(), FlowMatchingOTSchedule(), "eps")
    Predictor(torch.nn.Identity(), FlowMatchingOTSchedule(), "x")


def test_an_ode_solver_failure_is_a_floating_point_error():
    """A drift that is NaN makes dopri5's step size underflow: one error naming it."""
    schedule = LinearVPSchedule()
    process = NeuralDiffusion(schedule, IdentityTransform())

    def nan_predictor(z, t):
        return z * math.nan

    with pytest.raises(FloatingPointError, match="ODE solver failed.*not finite"):
        get_sampler("ode")(process, nan_predictor, torch.randn(2, 2), time_grid(1))
