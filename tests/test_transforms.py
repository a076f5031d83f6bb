import pytest
import torch

from ndm.nets.mlp import TimeMLP
from ndm.transforms import AffineTransform, IdentityTransform, LearnedTransform
from tests.exact_gaussian import MATRIX, SHIFT


def _learned(derivative: str = "jvp") -> LearnedTransform:
    torch.manual_seed(0)
    return LearnedTransform(TimeMLP(2, hidden=32, depth=2), derivative).double()


@pytest.mark.parametrize(
    "derivative, recording", [("jvp", True), ("jvp", False), ("double_backward", True)]
)
def test_time_derivative_matches_finite_differences_float64(derivative: str, recording: bool):
    """dF/dt by each method, with autograd recording or not, against a fourth-order central
    difference.

    The time embedding oscillates with frequencies up to 1000, so the stencil is fourth order
    (relative error ~ (1000 h)^4 / 30 ~ 3e-10 at h = 1e-5) rather than the usual second order.
    """
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, dtype=torch.float64, generator=generator)
    t = torch.rand(16, dtype=torch.float64, generator=generator) * 0.9 + 0.05
    h = 1e-5
    for transform in (_learned(derivative), AffineTransform(MATRIX, SHIFT)):
        with torch.set_grad_enabled(recording):
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


def test_parameter_gradients_of_double_backward_equal_those_of_jvp():
    """Both derivative methods give the same gradients of a loss of ``(F, dF/dt)`` in the
    parameters and in ``x``."""
    transform = _learned("double_backward")
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(8, 2, dtype=torch.float64, generator=generator)
    t = torch.rand(8, dtype=torch.float64, generator=generator)
    params = [*transform.parameters()]

    def gradients(value_and_derivative) -> list[torch.Tensor]:
        xg = x.clone().requires_grad_(True)
        value, derivative = value_and_derivative(xg)
        loss = value.sin().sum() + derivative.pow(2).sum()
        return torch.autograd.grad(loss, [xg, *params])

    by_double_backward = gradients(lambda xg: transform(xg, t))
    transform.derivative = "jvp"
    by_jvp = gradients(lambda xg: transform(xg, t))
    assert all(g.abs().sum() > 0 for g in by_jvp)
    for a, b in zip(by_double_backward, by_jvp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unknown_derivative_method_is_refused():
    with pytest.raises(ValueError, match="unknown derivative 'finite'"):
        LearnedTransform(TimeMLP(2, hidden=8, depth=1), "finite")


def test_jvp_accepts_expanded_times():
    """``t.expand(B)`` shares one memory location; the jvp in ``t`` must copy it."""
    transform = _learned()
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    expanded, repeated = transform(x, t.expand(4)), transform(x, t.repeat(4))
    for a, b in zip(expanded, repeated, strict=True):
        torch.testing.assert_close(a, b)
