"""Decoders ``p(x | z_0)`` for the reconstruction term ``L_rec = -log p(x | z_0)``."""

from __future__ import annotations

import math
from typing import Protocol

from torch import Tensor

from ndm.transforms import _per_example


class Decoder(Protocol):
    def nll(self, x: Tensor, z0: Tensor, alpha0: Tensor, sigma0: Tensor) -> Tensor:
        """``-log p(x | z_0)`` per example, ``[B]``, in nats; ``alpha0``, ``sigma0`` of shape ``[B]``."""
        ...


class GaussianDecoder:
    """Continuous data: ``p(x | z_0) = N(x; z_0 / alpha_0, (sigma_0 / alpha_0)^2 I)``."""

    def nll(self, x: Tensor, z0: Tensor, alpha0: Tensor, sigma0: Tensor) -> Tensor:
        scale = _per_example(sigma0 / alpha0, x)
        mean = z0 / _per_example(alpha0, x)
        per_dim = 0.5 * ((x - mean) / scale) ** 2 + scale.log() + 0.5 * math.log(2 * math.pi)
        return per_dim.flatten(1).sum(1)
