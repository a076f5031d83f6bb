import torch

from ndm.nets.mlp import TimeMLP
from ndm.transforms import AffineTransform, IdentityTransform, LearnedTransform
from tests.exact_gaussian import MATRIX, SHIFT


def _learned() -> LearnedTransform:
    torch.manual_seed(0)
    return LearnedTransform(TimeMLP(2, hidden=32, depth=2)).double()


def test_jvp_time_derivative_matches_finite_differences_float64():
    """dF/dt from the JVP against a fourth-order central difference.

    The time embedding oscillates with frequencies up to 1000, so the stencil is fourth order
    (relative error ~ (1000 h)^4 / 30 ~ 3e-10 at h = 1e-5) rather than the usual second order.
    """
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, dtype=torch.float64, generator=generator)
    t = torch.rand(16, dtype=torch.float64, generator=generator) * 0.9 + 0.05
    h = 1e-5
    for transform in (_learned(), AffineTransform(MATRIX, SHIFT)):
        value, derivative = transform(x, t)
        f = transform.value
        fd = (8 * (f(x, t + h) - f(x, t - h)) - (f(x, t + 2 * h) - f(x, t - 2 * h))) / (12 * h)
        torch.testing.assert_close(value, f(x, t))
        torch.testing.assert_close(derivative, fd, rtol=1e-7, atol=1e-9)


def test_boundary_condition_holds_for_a_nonlinear_learned_transform():
    transform = _learned()
    x = torch.randn(8, 2, dtype=torch.float64)
    assert transform.value(x, torch.full((8,), 0.5, dtype=torch.float64)).sub(x).abs().max() > 1e-3
    torch.testing.assert_close(transform.value(x, torch.zeros(8, dtype=torch.float64)), x)


def test_identity_and_learned_flags():
    x, t = torch.randn(4, 2), torch.rand(4)
    value, derivative = IdentityTransform()(x, t)
    assert torch.equal(value, x) and torch.equal(derivative, torch.zeros_like(x))
    assert not IdentityTransform().is_learned
    assert not AffineTransform(MATRIX, SHIFT).is_learned
    assert _learned().is_learned


def test_learned_transform_gradients_flow_through_jvp():
    transform = _learned()
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    value, derivative = transform(x, t)
    (value.sum() + derivative.pow(2).sum()).backward()
    grads = [p.grad for p in transform.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_jvp_accepts_expanded_times():
    """``t.expand(B)`` shares one memory location; the jvp in ``t`` must copy it."""
    transform = _learned()
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    expanded, repeated = transform(x, t.expand(4)), transform(x, t.repeat(4))
    for a, b in zip(expanded, repeated, strict=True):
        torch.testing.assert_close(a, b)
