"""Data transforms ``F_phi(x, t)`` of the forward process ``q(z_t | x) = N(alpha_t F(x, t), sigma_t^2 I)``.

A transform returns its value and its time derivative together:
``transform(x, t) -> (F(x, t), dF/dt(x, t))`` with ``x`` of shape ``[B, ...]`` and ``t`` of
shape ``[B]``. The derivative is one forward-mode Jacobian-vector product in ``t``
(tangent 1) unless a subclass knows it in closed form. Every transform satisfies
``F(x, 0) = x`` so that the decoder ``p(x | z_0)`` stays standard.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _per_example(t: Tensor, like: Tensor) -> Tensor:
    """Reshape times ``[B]`` to ``[B, 1, ..., 1]`` so they broadcast against ``like``."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class Transform(nn.Module):
    """Base class. Subclasses implement :meth:`value`; ``forward`` adds ``dF/dt``."""

    def value(self, x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``F(x, t)``, shape of ``x``."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(F(x, t), dF/dt(x, t))`` by one ``torch.func.jvp`` in ``t``."""
        # jvp cannot attach a tangent to a tensor with repeated memory (``t.expand(B)``).
        t = t.contiguous()
        return torch.func.jvp(lambda time: self.value(x, time), (t,), (torch.ones_like(t),))

    @property
    def is_learned(self) -> bool:
        """Whether the transform has trainable parameters."""
        return any(p.requires_grad for p in self.parameters())


class IdentityTransform(Transform):
    """``F(x, t) = x``: the NDM reduces to DDPM / DDIM / VDM."""

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x, torch.zeros_like(x)


class AffineTransform(Transform):
    """Fixed time-dependent affine map on flat data ``x`` of shape ``[B, D]``.

    ``F(x, t) = x + t (x M^T + b)``, so ``F(x, 0) = x`` and ``dF/dt = x M^T + b``.
    """

    def __init__(self, matrix: Tensor, shift: Tensor):
        super().__init__()
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square [D, D], got shape {tuple(matrix.shape)}")
        if shift.shape != matrix.shape[:1]:
            raise ValueError(f"shift must have shape [{matrix.shape[0]}], got {tuple(shift.shape)}")
        self.register_buffer("matrix", matrix)
        self.register_buffer("shift", shift)

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        return x + t[:, None] * (x @ self.matrix.T + self.shift)

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        velocity = x @ self.matrix.T + self.shift
        return x + t[:, None] * velocity, velocity


class LearnedTransform(Transform):
    """``F_phi(x, t) = x + t NN_phi(x, t)`` for any network ``NN(x [B, ...], t [B]) -> [B, ...]``.

    ``F(x, 0) = x`` holds by construction for every ``phi``. Initialise the network's last
    layer at zero to start from the identity (the DDPM forward process).
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor] | nn.Module):
        super().__init__()
        self.net = net

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        return x + _per_example(t, x) * self.net(x, t)
