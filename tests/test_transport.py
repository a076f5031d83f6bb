"""Transport measures: exact OT costs against closed forms and peer solvers, straightness of
paths with known geometry, and probability-flow paths against the exact Gaussian flow."""

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ndm.analysis.transport import (
    chord_length_ratio,
    exact_ot_cost,
    kinetic_energy,
    map_transport_cost,
    ot_cost_1d,
    ot_cost_emd,
    path_length,
    path_straightness,
    probability_flow_paths,
)
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import CosineSchedule
from ndm.diffusion.transforms import IdentityTransform
from tests.exact_gaussian import COV, MEAN, ExactGaussianPredictor


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sorting_cost_equals_pot_exact_cost_in_1d():
    x = _randn(300, 1, seed=0)
    y = 0.5 * _randn(300, 1, seed=1).pow(3) + 1.0
    assert ot_cost_1d(x, y) == pytest.approx(ot_cost_emd(x, y), rel=1e-10)
    assert exact_ot_cost(x, y) == ot_cost_1d(x, y)


def test_pot_cost_equals_optimal_assignment_in_2d():
    # With N points of weight 1/N on each side an optimal coupling is a permutation
    # (Birkhoff), so the OT cost is the optimal assignment cost of scipy's solver, over N.
    x, y = _randn(80, 2, seed=2), _randn(80, 2, seed=3) * torch.tensor([2.0, 0.5]) + 1.0
    cost = torch.cdist(x, y).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert ot_cost_emd(x, y) == pytest.approx(cost[rows, cols].mean(), rel=1e-10)
    assert exact_ot_cost(x, y) == ot_cost_emd(x, y)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_ot_cost_of_a_translation_is_the_squared_shift(dim):
    # sum_i ||x_i + c - x_pi(i)||^2 = sum_i ||x_i - x_pi(i)||^2 + N ||c||^2: the identity
    # pairing is optimal and costs ||c||^2.
    x = _randn(400, dim, seed=4)
    shift = torch.tensor([0.7, -1.3, 0.4][:dim], dtype=torch.float64)
    expected = float(shift.pow(2).sum())
    assert exact_ot_cost(x, x + shift) == pytest.approx(expected, rel=1e-9)
    assert map_transport_cost(x, x + shift) == pytest.approx(expected, rel=1e-12)


def test_emd_stopped_before_the_optimum_raises():
    x, y = _randn(50, 2, seed=11), _randn(50, 2, seed=12)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="did not reach"):
        ot_cost_emd(x, y, max_iterations=2)


def test_map_cost_of_a_permuted_pairing_is_at_least_the_ot_cost():
    x, y = _randn(200, 2, seed=5), _randn(200, 2, seed=6) + 2.0
    assert map_transport_cost(x, y) > ot_cost_emd(x, y)
    # Scaling x -> 2x moves each point by x: the cost is the mean squared norm.
    assert map_transport_cost(x, 2 * x) == pytest.approx(float(x.pow(2).sum(1).mean()))


def test_1d_ot_cost_approaches_the_gaussian_w2_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2. In 1-D the cost between
    # two samples splits exactly into (mean gap)^2 + (std gap)^2 + a non-negative shape term;
    # for Gaussian samples of size n the gaps have standard deviations sqrt((s1^2 + s2^2) / n)
    # and sqrt((s1^2 + s2^2) / (2 n)) and the shape term is O(log(n) / n). The tolerance is
    # five standard deviations of the first-order fluctuation plus that shape term.
    n, (m1, s1), (m2, s2) = 200_000, (0.0, 1.0), (1.5, 2.0)
    x = m1 + s1 * _randn(n, 1, seed=7)
    y = m2 + s2 * _randn(n, 1, seed=8)
    exact = (m1 - m2) ** 2 + (s1 - s2) ** 2
    spread = s1**2 + s2**2
    std = math.sqrt(4 * (m1 - m2) ** 2 * spread / n + 4 * (s1 - s2) ** 2 * spread / (2 * n))
    tolerance = 5 * std + spread * math.log(n) / n
    assert abs(ot_cost_1d(x, y) - exact) < tolerance


def _grid(num: int) -> torch.Tensor:
    """Times on [0, 1], denser near 0 (like the benchmark's grid)."""
    return torch.linspace(0, 1, num, dtype=torch.float64) ** 2


def test_straight_constant_speed_path_has_straightness_one():
    t = _grid(101)
    start = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    end = torch.tensor([[3.0, 0.5]], dtype=torch.float64)
    path = start + t[:, None, None] * (end - start)
    velocity = (end - start).expand_as(path)
    assert float(path_straightness(path, velocity, t)) == pytest.approx(1.0, rel=1e-12)
    assert float(chord_length_ratio(path, velocity, t)) == pytest.approx(1.0, rel=1e-12)
    # The same segment run over a time span of 2 at half the speed.
    assert float(path_straightness(path, velocity / 2, 2 * t)) == pytest.approx(1.0, rel=1e-12)
    reversed_t = t.flip(0)
    assert float(path_straightness(path.flip(0), velocity.flip(0), reversed_t)) == pytest.approx(1)


def test_straight_path_at_varying_speed():
    # z = a + t^2 (b - a): energy int 4 t^2 |b - a|^2 dt = 4/3 |b - a|^2, so straightness 3/4;
    # the chord equals the length.
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    start, end = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    path = start + (t**2)[:, None, None] * (end - start)
    velocity = (2 * t)[:, None, None] * (end - start)
    assert float(kinetic_energy(velocity, t)) == pytest.approx(4 / 3 * 2, rel=1e-6)
    assert float(path_straightness(path, velocity, t)) == pytest.approx(0.75, rel=1e-6)
    assert float(chord_length_ratio(path, velocity, t)) == pytest.approx(1.0, rel=1e-6)


def test_quarter_circle():
    # z = r (cos(pi t / 2), sin(pi t / 2)): speed pi r / 2, length pi r / 2, chord r sqrt(2),
    # so straightness chord^2 / length^2 = 8 / pi^2 and chord / length = 2 sqrt(2) / pi.
    r = 1.5
    t = _grid(1001)
    angle = math.pi * t / 2
    path = r * torch.stack([angle.cos(), angle.sin()], dim=1)[:, None, :]
    velocity = r * math.pi / 2 * torch.stack([-angle.sin(), angle.cos()], dim=1)[:, None, :]
    assert float(path_length(velocity, t)) == pytest.approx(math.pi * r / 2, rel=1e-12)
    assert float(kinetic_energy(velocity, t)) == pytest.approx((math.pi * r / 2) ** 2, rel=1e-12)
    assert float(path_straightness(path, velocity, t)) == pytest.approx(8 / math.pi**2, rel=1e-12)
    ratio = float(chord_length_ratio(path, velocity, t))
    assert ratio == pytest.approx(2 * math.sqrt(2) / math.pi, rel=1e-12)


def test_bad_inputs_raise_clear_errors():
    x = _randn(10, 2, seed=9)
    with pytest.raises(ValueError, match="same shape"):
        exact_ot_cost(x, x[:9])
    with pytest.raises(ValueError, match="same shape"):
        map_transport_cost(x, x[:, :1])
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ot_cost_emd(x, bad)
    with pytest.raises(ValueError, match="1-D"):
        ot_cost_1d(x, x)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        exact_ot_cost(x[:, 0], x[:, 0])
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    path = torch.zeros(5, 3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="zero kinetic energy"):
        path_straightness(path, path, t)
    with pytest.raises(ValueError, match="monotone"):
        path_straightness(path, path, t[[0, 2, 1, 3, 4]])
    with pytest.raises(ValueError, match="time points"):
        path_straightness(path[:4], path[:4], t)
    nan_path = path.clone()
    nan_path[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        path_straightness(nan_path, path + 1, t)


def test_probability_flow_paths_follow_the_exact_gaussian_flow(single_thread):
    # With F = x and Gaussian data N(mu, Sigma) the flow is affine in the eigenbasis of Sigma:
    # z_t = alpha_t mu + V diag(c_t / c_1) V^T (z_1 - alpha_1 mu), c_t = sqrt(alpha_t^2 lam + sigma_t^2),
    # with velocity alpha'_t mu + V diag(c'_t / c_1) V^T (z_1 - alpha_1 mu),
    # c'_t = (alpha_t alpha'_t lam + sigma_t sigma'_t) / c_t.
    schedule = CosineSchedule().double()
    process = NeuralDiffusion(schedule, IdentityTransform())
    predictor = ExactGaussianPredictor(schedule, IdentityTransform())
    z1 = _randn(16, 2, seed=10)
    times = _grid(41).flip(0)
    paths = probability_flow_paths(process, predictor, z1, times, rtol=1e-9, atol=1e-9)
    sched = schedule(times)
    lam, vec = torch.linalg.eigh(COV)
    c = (sched.alpha[:, None] ** 2 * lam + sched.sigma[:, None] ** 2).sqrt()
    dc = (
        sched.alpha[:, None] * sched.d_alpha[:, None] * lam + (sched.sigma * sched.d_sigma)[:, None]
    ) / c
    centred = (z1 - sched.alpha[0] * MEAN) @ vec
    path = sched.alpha[:, None, None] * MEAN + (centred * (c / c[0])[:, None, :]) @ vec.T
    velocity = sched.d_alpha[:, None, None] * MEAN + (centred * (dc / c[0])[:, None, :]) @ vec.T
    torch.testing.assert_close(paths.path, path, rtol=0, atol=1e-7)
    torch.testing.assert_close(paths.velocity, velocity, rtol=1e-6, atol=1e-6)
    assert paths.nfe > 0 and paths.times is times
