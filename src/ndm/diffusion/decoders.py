"""Decoders ``p(x | z_0)`` for the reconstruction term ``L_rec = -log p(x | z_0)``."""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from ndm.diffusion.transforms import per_example


class Decoder(Protocol):
    def nll(self, x: Tensor, z0: Tensor, alpha0: Tensor, sigma0: Tensor) -> Tensor:
        """``-log p(x | z_0)`` per example, ``[B]``, in nats; ``alpha0``, ``sigma0`` of shape ``[B]``."""
        ...


class GaussianDecoder:
    """Continuous data: ``p(x | z_0) = N(x; z_0 / alpha_0, (sigma_0 / alpha_0)^2 I)``."""

    def nll(self, x: Tensor, z0: Tensor, alpha0: Tensor, sigma0: Tensor) -> Tensor:
        scale = per_example(sigma0 / alpha0, x)
        mean = z0 / per_example(alpha0, x)
        per_dim = 0.5 * ((x - mean) / scale) ** 2 + scale.log() + 0.5 * math.log(2 * math.pi)
        return per_dim.flatten(1).sum(1)


class CategoricalDecoder:
    """Discrete data with ``L`` levels, scaled to ``[-1, 1]`` at the bin centres
    ``v_k = (2 k + 1) / L - 1``: a per-pixel categorical with logits
    ``-(z_0 - alpha_0 v_k)^2 / (2 sigma_0^2)``, ``k = 0..L-1``.

    ``x`` is mapped to the level of the bin it lies in, so bin centres and uniformly
    dequantised values give the same ``-log P(k | z_0)``. Memory: ``[B, D, L]``.
    """

    def __init__(self, num_levels: int = 256):
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        self.num_levels = num_levels

    def levels(self, x: Tensor) -> Tensor:
        """The integer level ``k = floor((x + 1) L / 2)`` (clamped to ``0..L-1``) of ``x``."""
        k = torch.floor((x + 1) * self.num_levels / 2)
        return k.clamp(0, self.num_levels - 1).long()

    def nll(self, x: Tensor, z0: Tensor, alpha0: Tensor, sigma0: Tensor) -> Tensor:
        L = self.num_levels
        centres = (2 * torch.arange(L, dtype=z0.dtype, device=z0.device) + 1) / L - 1
        a0 = alpha0.reshape(-1, 1, 1)
        s0 = sigma0.reshape(-1, 1, 1)
        z = z0.flatten(1).unsqueeze(-1)
        log_probs = torch.log_softmax(-((z - a0 * centres) ** 2) / (2 * s0**2), dim=-1)
        picked = log_probs.gather(-1, self.levels(x).flatten(1).unsqueeze(-1)).squeeze(-1)
        return -picked.sum(1)
