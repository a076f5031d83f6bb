import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import torch

from ndm.diffusion.blur import BlurTransform, dct_matrix
from ndm.diffusion.transforms import Transform


def _image(shape=(3, 2, 8, 6), seed=0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_dct_matrix_matches_scipy_and_is_orthonormal():
    x = np.random.default_rng(0).normal(size=(7, 5))
    v = dct_matrix(7).numpy()
    np.testing.assert_allclose(v @ x, scipy.fft.dct(x, axis=0, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(v @ v.T, np.eye(7), atol=1e-12)


def test_blur_matches_scipy_dct_with_the_stated_frequency_scales():
    transform = BlurTransform(8, 6, sigma_max=3.0, min_scale=0.01).double()
    x, t = _image(), torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    value = transform.value(x, t).numpy()
    u, v = np.arange(8)[:, None] / 8, np.arange(6)[None, :] / 6
    for b, tb in enumerate(t.tolist()):
        sigma = 3.0 * math.sin(math.pi * tb / 2) ** 2
        scale = 0.99 * np.exp(-(math.pi**2) * (u**2 + v**2) * sigma**2 / 2) + 0.01
        coeff = scipy.fft.dctn(x[b].numpy(), axes=(-2, -1), norm="ortho")
        expected = scipy.fft.idctn(scale * coeff, axes=(-2, -1), norm="ortho")
        np.testing.assert_allclose(value[b], expected, atol=1e-12)


def test_small_blur_is_a_gaussian_filter_with_reflecting_boundaries():
    """Heat dissipation for time sigma^2 / 2 is a Gaussian blur of sigma pixels."""
    transform = BlurTransform(32, 32, sigma_max=1.5, min_scale=0.0).double()
    x = _image((1, 1, 32, 32))
    ours = transform.value(x, torch.ones(1, dtype=torch.float64))[0, 0].numpy()
    theirs = scipy.ndimage.gaussian_filter(x[0, 0].numpy(), sigma=1.5, mode="reflect", truncate=8)
    # The discrete cosine spectrum of a sampled Gaussian differs from the continuous one
    # by aliasing terms of order exp(-2 sigma^2) ~ 1e-2.
    assert np.abs(ours - theirs).max() < 0.03
    assert np.abs(ours - x[0, 0].numpy()).max() > 0.5


def test_identity_at_zero_and_mean_colour_kept():
    transform = BlurTransform(8, 6).double()
    x = _image()
    torch.testing.assert_close(transform.value(x, torch.zeros(3, dtype=torch.float64)), x)
    blurred = transform.value(x, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(blurred.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)))
    constant = torch.full((3, 2, 8, 6), 0.7, dtype=torch.float64)
    torch.testing.assert_close(
        transform.value(constant, torch.rand(3, dtype=torch.float64)), constant
    )


def test_closed_form_derivative_matches_jvp_and_finite_differences():
    transform = BlurTransform(8, 6, sigma_max=4.0).double()
    x = _image()
    t = torch.tensor([0.1, 0.45, 0.9], dtype=torch.float64)
    value, derivative = transform(x, t)
    _, jvp = Transform.forward(transform, x, t)
    f, h = transform.value, 1e-4
    fd = (8 * (f(x, t + h) - f(x, t - h)) - (f(x, t + 2 * h) - f(x, t - 2 * h))) / (12 * h)
    torch.testing.assert_close(value, f(x, t))
    torch.testing.assert_close(derivative, jvp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(derivative, fd, rtol=1e-7, atol=1e-9)
    assert derivative.abs().max() > 0.1


def test_bad_min_scale_rejected():
    with pytest.raises(ValueError, match="min_scale"):
        BlurTransform(4, 4, min_scale=1.0)
