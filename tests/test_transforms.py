import warnings

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre

from ndm.diffusion.transforms import (
    AffineTransform,
    IdentityTransform,
    LearnedTransform,
    SeparableTransform,
    Transform,
    legendre_basis,
)
from ndm.nets.mlp import TimeMLP
from tests.exact_gaussian import MATRIX, SHIFT


def _learned(derivative: str = "jvp", form: str = "residual") -> LearnedTransform:
    torch.manual_seed(0)
    return LearnedTransform(TimeMLP(2, hidden=32, depth=2), derivative, form).double()


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
    transforms = (_learned(derivative), _learned(derivative, "interpolation"))
    for transform in (*transforms, AffineTransform(MATRIX, SHIFT)):
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


def test_the_interpolation_form_is_its_formula():
    """F = (1 - t) x + t NN(x, t): x at t = 0, NN(x, 1) at t = 1, and the residual form
    minus t x in between."""
    residual, interpolation = _learned(), _learned(form="interpolation")
    x = torch.randn(8, 2, dtype=torch.float64)
    for t in (0.0, 0.4, 1.0):
        times = torch.full((8,), t, dtype=torch.float64)
        expected = residual.value(x, times) - t * x
        torch.testing.assert_close(interpolation.value(x, times), expected)
    torch.testing.assert_close(
        interpolation.value(x, torch.ones(8, dtype=torch.float64)),
        interpolation.net(x, torch.ones(8, dtype=torch.float64)),
    )
    with pytest.raises(ValueError, match="unknown transform form 'affine'"):
        LearnedTransform(TimeMLP(2), form="affine")


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


def _separable(basis_size: int = 3, dim: int = 2) -> SeparableTransform:
    torch.manual_seed(0)
    net = TimeMLP(dim, hidden=32, depth=2, out_dim=basis_size * dim)
    return SeparableTransform(net, basis_size).double()


@pytest.mark.parametrize("size", [1, 2, 6])
def test_legendre_basis_and_derivatives_match_numpy(size: int):
    """``P_k(2t - 1)`` and ``d/dt P_k(2t - 1)`` against numpy's Legendre series."""
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    polys, slopes = legendre_basis(t, size)
    for k in range(size):
        coef = np.eye(size)[k]
        u = 2 * t.numpy() - 1
        np.testing.assert_allclose(polys[:, k], legendre.legval(u, coef), atol=1e-13)
        np.testing.assert_allclose(
            slopes[:, k], 2 * legendre.legval(u, legendre.legder(coef)), atol=1e-12
        )


def test_separable_derivative_equals_the_jvp_of_its_value():
    """The closed-form ``dF/dt`` against ``torch.func.jvp`` of ``F`` (the base class's way)."""
    transform = _separable()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 2, dtype=torch.float64, generator=generator)
    t = torch.rand(8, dtype=torch.float64, generator=generator)
    value, derivative = transform(x, t)
    jvp_value, jvp_derivative = Transform.forward(transform, x, t)
    torch.testing.assert_close(value, jvp_value)
    torch.testing.assert_close(derivative, jvp_derivative)
    assert derivative.abs().max() > 1e-3
    torch.testing.assert_close(transform.value(x, torch.zeros(8, dtype=torch.float64)), x)


def test_separable_transform_runs_its_network_once_for_all_times():
    """``values`` and ``evaluate`` equal one call per time, with one network call in all."""
    transform = _separable()
    calls = []
    transform.net.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(5, 2, dtype=torch.float64)
    times = [torch.rand(5, dtype=torch.float64) for _ in range(3)]
    values = transform.values(x, times)
    value, derivative, others = transform.evaluate(x, times[0], times[1:])
    assert len(calls) == 2
    for got, t in zip(values, times, strict=True):
        torch.testing.assert_close(got, transform.value(x, t))
    torch.testing.assert_close((value, derivative), transform(x, times[0]))
    torch.testing.assert_close(others, values[1:])


def test_separable_transform_checks_its_network_output():
    transform = SeparableTransform(TimeMLP(2, hidden=8, depth=1), basis_size=3)
    with pytest.raises(ValueError, match=r"must return \(4, 6\) for input \(4, 2\), got \(4, 2\)"):
        transform.value(torch.randn(4, 2), torch.rand(4))
    with pytest.raises(ValueError, match="basis_size must be at least 1"):
        SeparableTransform(TimeMLP(2, hidden=8, depth=1), basis_size=0)


class _AttentionNet(torch.nn.Module):
    """Self-attention over the 4 positions of ``x [B, 4, 2]``, conditioned on ``t``."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 6)

    def forward(self, x, t):
        q, k, v = self.proj(x * (1 + t.reshape(-1, 1, 1))).chunk(3, dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("derivative", ["jvp", "double_backward"])
def test_a_transform_with_attention_has_both_derivatives(derivative):
    """Attention's fast CPU kernel has neither a forward-mode nor a double-backward
    derivative; the transform takes them on the math kernel."""
    torch.manual_seed(0)
    transform = LearnedTransform(_AttentionNet(), derivative)
    x, t = torch.randn(3, 4, 2), torch.rand(3)
    value, d_dt = transform(x, t)
    h = 1e-3
    fd = (transform.value(x, t + h) - transform.value(x, t - h)) / (2 * h)
    torch.testing.assert_close(d_dt, fd, atol=1e-3, rtol=1e-2)
    d_dt.square().sum().backward()  # the training backward through the derivative
    assert transform.net.proj.weight.grad is not None


def test_a_network_without_forward_mode_derivative_falls_back_to_double_backward():
    class NoForwardMode(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return 2 * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    transform = LearnedTransform(lambda x, t: NoForwardMode.apply(x * t.reshape(-1, 1)))
    x, t = torch.ones(3, 2), torch.full((3,), 0.5)
    with pytest.warns(UserWarning, match="no forward-mode derivative.*double backward"):
        _, d_dt = transform(x, t)
    torch.testing.assert_close(d_dt, torch.full((3, 2), 2.0))  # d/dt (x + 2 t^2 x) = 4 t x
    with torch.no_grad():  # evaluation: the same derivative, without a graph
        _, d_dt = transform(x, t)
    assert not d_dt.requires_grad
    torch.testing.assert_close(d_dt, torch.full((3, 2), 2.0))


@pytest.mark.parametrize("derivative", ["jvp", "double_backward"])
def test_a_diffusers_unet_with_attention_works_as_the_transform(derivative):
    """A favourite network of the field, attention included, on a strided batch."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
        attention_head_dim=8,
    )  # fmt: skip
    unet = unet.double()
    transform = LearnedTransform(lambda x, t: unet(x, t * 999).sample, derivative)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64).transpose(2, 3)  # not contiguous
    t = torch.rand(3, dtype=torch.float64)
    with warnings.catch_warnings(record=True):  # jvp: group norm's rule fails, a warning
        value, d_dt = transform(x, t)
    h = 1e-4  # diffusers embeds the time in float32
    fd = (transform.value(x, t + h) - transform.value(x, t - h)) / (2 * h)
    torch.testing.assert_close(d_dt, fd, atol=0.05, rtol=0.05)  # a float32 finite difference
    assert float(fd.detach().abs().mean()) > 0.1  # a derivative worth checking
    d_dt.square().sum().backward()


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_transform_time_scale_slows_the_time_embedding_of_f(shape: tuple[int, ...]) -> None:
    from ndm.runs.builders import build_transform
    from ndm.runs.config import ModelConfig

    def transform(time_scale: float) -> LearnedTransform:
        torch.manual_seed(0)  # the same weights for each scale
        cfg = ModelConfig(hidden=16, depth=2, transform_init_scale=1.0,
                          transform_time_scale=time_scale)  # fmt: skip
        return build_transform(cfg, shape).double()

    fast, slow = transform(1000.0), transform(10.0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, *shape, dtype=torch.float64, generator=generator)
    t = torch.rand(6, dtype=torch.float64, generator=generator)
    # the embedding of t at scale 10 is the one of t / 100 at scale 1000
    torch.testing.assert_close(slow.net(x, t), fast.net(x, t / 100))
    if len(shape) == 1:  # dF/dt - NN = t dNN/dt, where the fast embedding's frequencies reach 1000
        slow_rate, fast_rate = (f(x, t)[1] - f.net(x, t) for f in (slow, fast))
        assert slow_rate.norm() * 10 < fast_rate.norm()
    with pytest.raises(ValueError, match="transform_time_scale"):
        ModelConfig(transform="identity", transform_time_scale=10.0)
