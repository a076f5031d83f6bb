import math

import pytest
import torch
from scipy.integrate import quad

from ndm.diffusion.schedules import (
    SCHEDULES,
    CosineSchedule,
    FlowMatchingOTSchedule,
    LearnedVPSchedule,
    LinearVPSchedule,
    LogSNRLinearSchedule,
    make_schedule,
)

T = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)


def _perturbed_learned() -> LearnedVPSchedule:
    torch.manual_seed(3)
    sched = LearnedVPSchedule(hidden=16).double()
    with torch.no_grad():
        for p in sched.parameters():
            p.add_(torch.randn_like(p))
    return sched


ALL = {
    "log_snr": LogSNRLinearSchedule().double(),
    "linear": LinearVPSchedule().double(),
    "cosine": CosineSchedule().double(),
    "fm_ot": FlowMatchingOTSchedule(sigma_min=1e-3).double(),
    "learned": _perturbed_learned(),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_derivatives_match_finite_differences(name):
    sched, h = ALL[name], 1e-6
    with torch.no_grad():
        now, up, down = sched(T), sched(T + h), sched(T - h)
    for field in ("alpha", "sigma", "gamma"):
        fd = (getattr(up, field) - getattr(down, field)) / (2 * h)
        analytic = getattr(now, "d_" + field)
        torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ALL))
def test_gamma_is_log_snr_and_g2_matches_eq6(name):
    v = ALL[name](T)
    torch.testing.assert_close(v.gamma, torch.log(v.sigma**2 / v.alpha**2))
    assert bool((v.d_gamma > 0).all())
    torch.testing.assert_close(v.g2, v.d_sigma2 - 2 * v.r * v.sigma**2)


@pytest.mark.parametrize("name", ["log_snr", "linear", "cosine", "learned"])
def test_variance_preserving(name):
    v = ALL[name](T)
    torch.testing.assert_close(v.alpha**2 + v.sigma**2, torch.ones_like(T))


def test_linear_vp_matches_integral_of_beta():
    sched = LinearVPSchedule(beta_min=0.1, beta_max=20.0, t_min=1e-5).double()
    v = sched(T)
    for t, alpha in zip(T.tolist(), v.alpha.tolist(), strict=True):
        u = 1e-5 + (1 - 1e-5) * t
        integral, _ = quad(lambda s: 0.1 + 19.9 * s, 0.0, u)
        assert alpha == pytest.approx(math.exp(-0.5 * integral), rel=1e-10)
    assert float(sched(torch.zeros(1, dtype=torch.float64)).sigma) > 0


def test_cosine_is_cosine_with_pinned_log_snr():
    sched = CosineSchedule(gamma_min=-10.0, gamma_max=6.0).double()
    ends = sched(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends.gamma, torch.tensor([-10.0, 6.0], dtype=torch.float64))
    v = sched(T)
    u = sched.u_min + (sched.u_max - sched.u_min) * T
    torch.testing.assert_close(v.alpha, torch.cos(0.5 * math.pi * u))


def test_flow_matching_ot_formula():
    v = FlowMatchingOTSchedule(sigma_min=0.01).double()(T)
    torch.testing.assert_close(v.alpha, 1 - T)
    torch.testing.assert_close(v.sigma, 0.01 + 0.99 * T)


def test_learned_schedule_endpoints_pinned_and_monotone_for_any_parameters():
    for seed in range(3):
        torch.manual_seed(seed)
        sched = LearnedVPSchedule(gamma_min=-13.3, gamma_max=5.0, hidden=32).double()
        with torch.no_grad():
            for p in sched.parameters():
                p.add_(3 * torch.randn_like(p))
        ends = sched(torch.tensor([0.0, 1.0], dtype=torch.float64)).gamma
        torch.testing.assert_close(ends, torch.tensor([-13.3, 5.0], dtype=torch.float64))
        grid = torch.linspace(0, 1, 200, dtype=torch.float64)
        assert bool((sched(grid).gamma.diff() > 0).all())


@pytest.mark.parametrize("name", sorted(ALL))
def test_expanded_times_give_the_values_of_repeated_times(name):
    """``t.expand(B)`` shares one memory location; the learned schedule's jvp must copy it."""
    t = torch.tensor(0.3, dtype=torch.float64)
    expanded, repeated = ALL[name](t.expand(4)), ALL[name](t.repeat(4))
    for field in ("alpha", "sigma", "gamma", "d_gamma"):
        torch.testing.assert_close(getattr(expanded, field), getattr(repeated, field))


def test_log_snr_schedule_is_linear_in_gamma_between_vdm_ends():
    sched = LogSNRLinearSchedule()
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    v = sched(t)
    torch.testing.assert_close(
        v.gamma, torch.tensor([-13.3, -13.3 + 18.3 / 4, 5.0], dtype=torch.float64)
    )
    torch.testing.assert_close(v.d_gamma, torch.full_like(t, 18.3))
    torch.testing.assert_close(
        v.alpha[0] ** 2, torch.sigmoid(torch.tensor(13.3, dtype=torch.float64))
    )


def test_learned_schedule_is_trainable():
    sched = LearnedVPSchedule(hidden=8)
    sched(torch.rand(16)).gamma.sum().backward()
    assert sched.l2.weight.grad is not None and sched.l2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["log_snr", "learned"])
def test_learned_endpoints_start_at_the_fixed_ones_and_are_trained(name):
    fixed, learned = make_schedule(name).double(), make_schedule(name, learn_endpoints=True)
    learned = learned.double()
    assert [n for n, _ in fixed.named_parameters() if "endpoints" in n] == []
    assert sorted(fixed.state_dict()) == sorted(
        k for k in learned.state_dict() if "endpoints" not in k
    )
    # (shape parameters of the learned schedule are shared: same init)
    learned.load_state_dict(fixed.state_dict(), strict=False)
    # (the learned ends were made in float32: -13.3 and log(18.3) rounded there)
    torch.testing.assert_close(learned(T).gamma, fixed(T).gamma, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(learned(T).d_gamma, fixed(T).d_gamma, rtol=1e-6, atol=1e-5)
    with torch.no_grad():
        learned.endpoints.learned.copy_(torch.tensor([-6.0, math.log(4.0)]))
    ends = learned(torch.tensor([0.0, 1.0], dtype=torch.float64)).gamma
    torch.testing.assert_close(ends, torch.tensor([-6.0, -2.0], dtype=torch.float64))
    assert learned.endpoints.values() == pytest.approx((-6.0, -2.0))
    learned(T).alpha.sum().backward()
    grad = learned.endpoints.learned.grad
    assert grad is not None and bool((grad != 0).all())
    with pytest.raises(ValueError, match="schedule 'cosine' has fixed end points"):
        make_schedule("cosine", learn_endpoints=True)


def test_registry_and_errors():
    assert set(SCHEDULES) == {"log_snr", "linear", "cosine", "fm_ot", "learned"}
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        make_schedule("nope")
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        CosineSchedule(gamma_min=1.0, gamma_max=0.0)
