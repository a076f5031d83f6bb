"""Data transforms ``F_phi(x, t)`` of the forward process ``q(z_t | x) = N(alpha_t F(x, t), sigma_t^2 I)``.

A transform returns its value and its time derivative together:
``transform(x, t) -> (F(x, t), dF/dt(x, t))`` with ``x`` of shape ``[B, ...]`` and ``t`` of
shape ``[B]``. Unless a subclass knows it in closed form, the derivative is the
Jacobian-vector product ``J 1`` with ``J = dF/dt``, by one ``torch.func.jvp``, or, when
autograd records (training) and the transform's ``derivative`` is ``"double_backward"``, by
the double-backward trick: faster through the small U-Nets, with more memory saved for the
backward pass (``benchmarks/step_time.py``). Every transform satisfies
``F(x, 0) = x`` so that the decoder ``p(x | z_0)`` stays standard.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _per_example(t: Tensor, like: Tensor) -> Tensor:
    """Reshape times ``[B]`` to ``[B, 1, ..., 1]`` so they broadcast against ``like``."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


DERIVATIVES = ("jvp", "double_backward")


class Transform(nn.Module):
    """Base class. Subclasses implement :meth:`value`; ``forward`` adds ``dF/dt``."""

    derivative: str = "jvp"

    def value(self, x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``F(x, t)``, shape of ``x``."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(F(x, t), dF/dt(x, t))``, both ``[B, ...]``; differentiable when autograd records."""
        # jvp cannot attach a tangent to a tensor with repeated memory (``t.expand(B)``).
        t = t.contiguous()
        recording = torch.is_grad_enabled() and not t.requires_grad
        if recording and self.derivative == "double_backward":
            return self._value_and_derivative_by_double_backward(x, t)
        return torch.func.jvp(lambda time: self.value(x, time), (t,), (torch.ones_like(t),))

    def _value_and_derivative_by_double_backward(
        self, x: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``J 1`` as ``d/du (J^T u)`` at any ``u``: the vector-Jacobian product
        ``J^T u = d<F, u>/dt`` ``[B]`` is linear in ``u [B, ...]``, so its gradient in ``u``
        along ``1`` is ``J 1``. Both gradients keep their graphs for the training backward."""
        t = t.detach().requires_grad_(True)
        value = self.value(x, t)
        probe = torch.zeros_like(value, requires_grad=True)
        (vjp,) = torch.autograd.grad(value, t, probe, create_graph=True, allow_unused=True)
        if vjp is None:  # F does not depend on t
            return value, torch.zeros_like(value)
        (jvp,) = torch.autograd.grad(vjp, probe, torch.ones_like(t), create_graph=True)
        return value, jvp

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
    layer at zero to start from the identity (the DDPM forward process). ``derivative``
    (one of :data:`DERIVATIVES`) chooses how ``dF/dt`` is taken in training.
    """

    def __init__(
        self, net: Callable[[Tensor, Tensor], Tensor] | nn.Module, derivative: str = "jvp"
    ):
        super().__init__()
        if derivative not in DERIVATIVES:
            raise ValueError(f"unknown derivative {derivative!r}; choose one of {DERIVATIVES}")
        self.net, self.derivative = net, derivative

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        return x + _per_example(t, x) * self.net(x, t)
