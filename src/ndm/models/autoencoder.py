"""Autoencoder with a normalised likelihood for discrete images: the first stage of a latent NDM.

Encoder ``q(y | x) = N(y; mu(x), diag s(x)^2)``: ``x [B, C, H, W]`` to ``mu, log s`` of shape
``[B, c, H / 2^k, W / 2^k]`` (``k`` stride-2 convolutions).

Decoder ``p(x | y)``: independent discretised logistics over the ``L`` levels of the data. Level
``k`` sits at the bin centre ``v_k = (2 k + 1) / L - 1`` of a bin of half-width ``1 / L`` in
``[-1, 1]``; with the decoder's mean ``m`` and scale ``s`` (both ``[B, C, H, W]``)::

    P(k | y) = sigmoid((v_k + 1/L - m) / s) - sigmoid((v_k - 1/L - m) / s),

with the first bin extended to ``-inf`` and the last to ``+inf``, so that the ``L``
probabilities of a pixel sum to 1 exactly. The difference is evaluated in log space as
``log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a))`` (``a > b``), which stays finite
when both sigmoids saturate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ndm.nets.unet import group_norm

LOG_SCALE_MIN = -9.0


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """``H[N(mu, diag s^2)] = sum_d (log s_d + 1/2 log(2 pi e))`` per example, ``[B]``."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).flatten(1).sum(1)


def standard_normal_cross_entropy(mean: Tensor, log_std: Tensor) -> Tensor:
    """``E_{y ~ N(mu, diag s^2)}[-log N(y; 0, I)] = 1/2 sum_d (mu_d^2 + s_d^2 + log(2 pi))``, ``[B]``.

    Minus :func:`gaussian_entropy` this is ``KL(N(mu, diag s^2) || N(0, I))``, the prior term
    of a VAE with a standard normal prior.
    """
    per_dim = mean**2 + torch.exp(2 * log_std) + math.log(2 * math.pi)
    return 0.5 * per_dim.flatten(1).sum(1)


def levels_of(x: Tensor, num_levels: int) -> Tensor:
    """The level ``k = floor((x + 1) L / 2)`` (clamped to ``0..L-1``) of values in ``[-1, 1]``."""
    return torch.floor((x + 1) * num_levels / 2).clamp(0, num_levels - 1).long()


def discretised_logistic_log_prob(
    levels: Tensor, mean: Tensor, log_scale: Tensor, num_levels: int
) -> Tensor:
    """``log P(k | m, s)`` of the discretised logistic (module docstring) for integer levels
    ``k`` broadcast against ``mean`` and ``log_scale``; shape of the broadcast."""
    inv_scale = torch.exp(-log_scale)
    centre = (2 * levels.to(mean.dtype) + 1) / num_levels - 1
    upper = (centre + 1 / num_levels - mean) * inv_scale
    lower = (centre - 1 / num_levels - mean) * inv_scale
    not_last, not_first = levels < num_levels - 1, levels > 0
    zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
    log_upper = torch.where(not_last, F.logsigmoid(upper), zero)
    log_lower = torch.where(not_first, F.logsigmoid(-lower), zero)
    width = torch.log(-torch.expm1(-2 / num_levels * inv_scale))
    return log_upper + log_lower + torch.where(not_last & not_first, width, zero)


def discretised_logistic_mode(mean: Tensor, log_scale: Tensor, num_levels: int) -> Tensor:
    """The most probable level of each pixel, shape of ``mean``.

    Interior bins have equal width, so among them the bin holding ``m`` (the logistic's
    centre) has the most mass; the two edge bins reach to infinity and may hold more. The
    mode is the most probable of these three candidates.
    """
    candidates = torch.stack(
        [
            levels_of(mean, num_levels),
            torch.zeros_like(mean, dtype=torch.long),
            torch.full_like(mean, num_levels - 1, dtype=torch.long),
        ]
    )
    log_probs = discretised_logistic_log_prob(candidates, mean, log_scale, num_levels)
    return candidates.gather(0, log_probs.argmax(0, keepdim=True)).squeeze(0)


class _ResConv(nn.Module):
    """``h + conv(silu(GN(conv(silu(GN(h))))))``, the second convolution starting at zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            group_norm(channels, 8),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels, 8),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.layers(h)


class GaussianEncoder(nn.Module):
    """``x [B, C, H, W] -> (mu, log s)``, each ``[B, c, H / 2^k, W / 2^k]``."""

    def __init__(self, in_channels: int, latent_channels: int, downsample: int, hidden: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
        for _ in range(downsample):
            layers += [_ResConv(hidden), nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)]
        layers += [_ResConv(hidden), group_norm(hidden, 8), nn.SiLU()]
        layers.append(nn.Conv2d(hidden, 2 * latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(x).chunk(2, dim=1)
        # contiguous: the JVP of a learned transform through GroupNorm needs it in float64
        return mean.contiguous(), log_std.contiguous()


class LogisticDecoderNet(nn.Module):
    """``y [B, c, h, w] -> (m, log s)`` of the discretised logistic, each ``[B, C, h 2^k, w 2^k]``;
    ``log s`` is kept above :data:`LOG_SCALE_MIN` by a softplus. The output layer runs outside
    any autocast, in the precision of its weights: a bfloat16 mean would be coarser than the
    bins of 8-bit data."""

    def __init__(self, out_channels: int, latent_channels: int, upsample: int, hidden: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, hidden, 3, padding=1)]
        for _ in range(upsample):
            layers += [
                _ResConv(hidden),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(hidden, hidden, 3, padding=1),
            ]
        layers += [_ResConv(hidden), group_norm(hidden, 8), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out = nn.Conv2d(hidden, 2 * out_channels, 3, padding=1)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(y)
        with torch.autocast(h.device.type, enabled=False):
            mean, raw = self.out(h.to(self.out.weight.dtype)).chunk(2, dim=1)
            return mean, LOG_SCALE_MIN + F.softplus(raw - LOG_SCALE_MIN)


class Autoencoder(nn.Module):
    """Gaussian encoder and discretised-logistic decoder over ``num_levels`` levels.

    ``encoder(x) -> (mu, log s)`` and ``decoder(y) -> (m, log s)`` may be any modules with
    those signatures; :meth:`build` makes the convolutional pair.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_levels: int):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        self.encoder, self.decoder, self.num_levels = encoder, decoder, num_levels

    @classmethod
    def build(
        cls,
        image_shape: tuple[int, ...],
        latent_channels: int,
        downsample: int,
        hidden: int,
        num_levels: int,
    ) -> Autoencoder:
        """The convolutional autoencoder of images ``[C, H, W]`` with ``H`` and ``W``
        divisible by ``2^downsample``."""
        channels, height, width = image_shape
        factor = 2**downsample
        if height % factor or width % factor:
            raise ValueError(
                f"latent downsample {downsample} needs image sides divisible by {factor}, "
                f"got {height}x{width}"
            )
        return cls(
            GaussianEncoder(channels, latent_channels, downsample, hidden),
            LogisticDecoderNet(channels, latent_channels, downsample, hidden),
            num_levels,
        )

    def encode(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(y, mu, log s)``: the reparameterised draw ``y = mu + s eps``, ``eps ~ N(0, I)``."""
        mean, log_std = self.encoder(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise, mean, log_std

    def decoder_nll(self, x: Tensor, y: Tensor) -> Tensor:
        """``-log p(x | y)`` in nats per example, ``[B]``; ``x`` in ``[-1, 1]`` is read as the
        level of the bin it lies in."""
        mean, log_scale = self.decoder(y)
        levels = levels_of(x, self.num_levels)
        log_prob = discretised_logistic_log_prob(levels, mean, log_scale, self.num_levels)
        return -log_prob.flatten(1).sum(1)

    def decode_mode(self, y: Tensor) -> Tensor:
        """The most probable image under ``p(x | y)``, at its levels' bin centres in
        ``[-1, 1]``, ``[B, C, H, W]``."""
        mean, log_scale = self.decoder(y)
        levels = discretised_logistic_mode(mean, log_scale, self.num_levels)
        return (2 * levels.to(mean.dtype) + 1) / self.num_levels - 1
