import math

import pytest
import torch

from ndm.diffusion.decoders import CategoricalDecoder, GaussianDecoder
from ndm.losses.likelihood import bits_per_dim, dequantisation_offset


def _centres(levels: int) -> torch.Tensor:
    return (2 * torch.arange(levels, dtype=torch.float64) + 1) / levels - 1


def test_categorical_probabilities_sum_to_one_and_match_the_formula():
    levels, decoder = 17, CategoricalDecoder(17)
    centres = _centres(levels)
    z0 = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    alpha0 = torch.tensor([0.9], dtype=torch.float64)
    sigma0 = torch.tensor([0.2], dtype=torch.float64)
    expected = [
        torch.log_softmax(-((z - 0.9 * centres) ** 2) / (2 * 0.2**2), 0) for z in (0.3, -0.8)
    ]
    first_pixel = torch.stack(
        [-decoder.nll(v.reshape(1, 1), z0[:, :1], alpha0, sigma0) for v in centres]
    )
    assert float(torch.logsumexp(first_pixel, 0).abs()) < 1e-12
    torch.testing.assert_close(first_pixel.squeeze(-1), expected[0])
    both = torch.stack(
        [
            -decoder.nll(torch.stack([v, w]).reshape(1, 2), z0, alpha0, sigma0)
            for v, w in zip(centres, centres.flip(0), strict=True)
        ]
    )
    torch.testing.assert_close(both.squeeze(-1), expected[0] + expected[1].flip(0))


def test_dequantised_values_decode_to_their_bin():
    decoder = CategoricalDecoder(256)
    k = torch.randint(0, 256, (8, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    centre = (2 * k.double() + 1) / 256 - 1
    dequantised = 2 * (k.double() + torch.rand(k.shape, dtype=torch.float64)) / 256 - 1
    assert torch.equal(decoder.levels(centre), k) and torch.equal(decoder.levels(dequantised), k)
    z0, a0, s0 = (
        torch.randn(8, 3, 4, 4, dtype=torch.float64),
        torch.full((8,), 0.99),
        torch.full((8,), 0.05),
    )
    torch.testing.assert_close(
        decoder.nll(centre, z0, a0, s0), decoder.nll(dequantised, z0, a0, s0)
    )


def test_fine_bins_approach_the_gaussian_density_times_the_bin_width():
    """With bins much narrower than sigma_0 / alpha_0, P(k) ~ p_Gauss(v_k) * 2 / L."""
    levels = 256
    generator = torch.Generator().manual_seed(1)
    x = _centres(levels)[torch.randint(64, 192, (4, 10), generator=generator)]
    alpha0, sigma0 = (
        torch.full((4,), 0.98, dtype=torch.float64),
        torch.full((4,), 0.1, dtype=torch.float64),
    )
    z0 = 0.98 * x + 0.1 * torch.randn(4, 10, dtype=torch.float64, generator=generator)
    categorical = CategoricalDecoder(levels).nll(x, z0, alpha0, sigma0)
    gaussian = GaussianDecoder().nll(x, z0, alpha0, sigma0) - 10 * math.log(2 / levels)
    torch.testing.assert_close(categorical, gaussian, rtol=1e-3, atol=1e-3)


def test_sharp_decoder_is_certain_of_the_right_level():
    decoder = CategoricalDecoder(256)
    x = _centres(256)[torch.arange(0, 256, 5)].reshape(1, -1)
    nll = decoder.nll(
        x,
        0.999 * x,
        torch.tensor([0.999], dtype=torch.float64),
        torch.tensor([1e-3], dtype=torch.float64),
    )
    assert float(nll) < 1e-6


def test_dequantisation_offset_makes_the_uniform_density_match_the_uniform_levels():
    """A uniform density on [-1, 1]^D has NLL D log 2 nats; with the offset this is log2 L
    bits/dim, the entropy of uniform L-level data."""
    for levels in (17, 256):
        dims = 784
        bpd = bits_per_dim(
            torch.tensor(dims * math.log(2), dtype=torch.float64),
            dims,
            dequantisation_offset(levels),
        )
        assert float(bpd) == pytest.approx(math.log2(levels), rel=1e-12)
    assert dequantisation_offset(256) == 7.0
