"""Data transforms ``F_phi(x, t)`` of the forward process ``q(z_t | x) = N(alpha_t F(x, t), sigma_t^2 I)``.

A transform returns its value and its time derivative together:
``transform(x, t) -> (F(x, t), dF/dt(x, t))`` with ``x`` of shape ``[B, ...]`` and ``t`` of
shape ``[B]``. Unless a subclass knows it in closed form, the derivative is the
Jacobian-vector product ``J 1`` with ``J = dF/dt``, by one ``torch.func.jvp``, or, when
autograd records (training) and the transform's ``derivative`` is ``"double_backward"``, by
the double-backward trick: faster through the small U-Nets, with more memory saved for the
backward pass (``benchmarks/step_time.py``). Every transform satisfies
``F(x, 0) = x`` so that the decoder ``p(x | z_0)`` stays standard.

The objectives and samplers need ``F`` of one batch at several times; they ask for them
together (:meth:`Transform.values`, :meth:`Transform.evaluate`), so a transform computes
them in one batched call, and :class:`SeparableTransform`, whose network does not see the
time, runs its network once for all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ndm.nets.checkpointing import whole_call


def per_example(t: Tensor, like: Tensor) -> Tensor:
    """Reshape times ``[B]`` to ``[B, 1, ..., 1]`` so they broadcast against ``like``."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


DERIVATIVES = ("jvp", "double_backward")
#: Forms of a learned transform: ``F = x + t NN(x, t)`` or ``F = (1 - t) x + t NN(x, t)``.
TRANSFORM_FORMS = ("residual", "interpolation")


class Transform(nn.Module):
    """Base class. Subclasses implement :meth:`value`; ``forward`` adds ``dF/dt``."""

    derivative: str = "jvp"
    _no_forward_mode = False  # set once jvp has failed on the network

    def value(self, x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``F(x, t)``, shape of ``x``."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(F(x, t), dF/dt(x, t))``, both ``[B, ...]``; differentiable when autograd records.

        Attention (``scaled_dot_product_attention``) runs on its math kernel here, the one
        whose forward-mode and double-backward derivatives exist. A network that has no
        forward-mode derivative (an operation without the rule, as group norm on a
        broadcast tangent in diffusers' U-Nets) gets ``dF/dt`` by double backward from then
        on, with a warning. A network that checkpoints its blocks has a ``jvp`` call
        checkpointed as one piece (forward-mode AD cannot run through checkpointed blocks)
        and the double-backward derivative checkpointed block by block."""
        # jvp cannot attach a tangent to a tensor with repeated memory (``t.expand(B)``)
        x, t = x.contiguous(), t.contiguous()
        recording = torch.is_grad_enabled() and not t.requires_grad
        with sdpa_kernel(SDPBackend.MATH):
            if self._no_forward_mode or (recording and self.derivative == "double_backward"):
                return self._value_and_derivative_by_double_backward(x, t, recording)
            try:
                if (
                    recording
                    and getattr(getattr(self, "net", None), "checkpointing", "none") != "none"
                ):
                    return self._checkpointed_value_and_derivative(x, t)
                return self._value_and_derivative_by_jvp(x, t)
            except (RuntimeError, NotImplementedError) as error:
                reason = str(error).strip().split("\n")[0][:160]
                self._no_forward_mode = True
                warnings.warn(
                    f"the transform's network has no forward-mode derivative ({reason}); "
                    "dF/dt is taken by double backward (derivative='double_backward')",
                    stacklevel=2,
                )
                return self._value_and_derivative_by_double_backward(x, t, recording)

    def _value_and_derivative_by_jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(F, J 1)`` from one forward-mode Jacobian-vector product in ``t``, tangent 1."""
        return torch.func.jvp(lambda time: self.value(x, time), (t,), (torch.ones_like(t),))

    def _checkpointed_value_and_derivative(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`_value_and_derivative_by_jvp` with checkpointing: the whole call as one
        piece (:func:`~ndm.nets.checkpointing.whole_call`)."""
        return whole_call(self._value_and_derivative_by_jvp, x, t)

    def values(self, x: Tensor, times: Sequence[Tensor]) -> list[Tensor]:
        """``[F(x, t_k) for t_k in times]`` (each ``t_k [B]``, each value ``[B, ...]``) in one
        call on the batch repeated once per time."""
        if len(times) == 1:
            return [self.value(x, times[0])]
        values = self.value(torch.cat([x] * len(times)), torch.cat(list(times)))
        return list(values.chunk(len(times)))

    def evaluate(
        self, x: Tensor, t: Tensor, times: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(F(x, t), dF/dt(x, t), [F(x, t_k) for t_k in times])``."""
        value, derivative = self(x, t)
        return value, derivative, self.values(x, times)

    def _value_and_derivative_by_double_backward(
        self, x: Tensor, t: Tensor, keep_graph: bool = True
    ) -> tuple[Tensor, Tensor]:
        """``J 1`` as ``d/du (J^T u)`` at any ``u``: the vector-Jacobian product
        ``J^T u = d<F, u>/dt`` ``[B]`` is linear in ``u [B, ...]``, so its gradient in ``u``
        along ``1`` is ``J 1``. With ``keep_graph`` both gradients keep their graphs for the
        training backward; without it (evaluation) the results are detached."""
        with torch.enable_grad():
            t = t.detach().requires_grad_(True)
            value = self.value(x, t)
            probe = torch.zeros_like(value, requires_grad=True)
            (vjp,) = torch.autograd.grad(value, t, probe, create_graph=True, allow_unused=True)
            if vjp is None:  # F does not depend on t
                jvp = torch.zeros_like(value)
            else:
                (jvp,) = torch.autograd.grad(vjp, probe, torch.ones_like(t), create_graph=True)
        return (value, jvp) if keep_graph else (value.detach(), jvp.detach())

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

    def values(self, x: Tensor, times: Sequence[Tensor]) -> list[Tensor]:
        return [x] * len(times)


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
    """``F_phi(x, t) = x + t NN_phi(x, t)`` (``form="residual"``) or
    ``F_phi(x, t) = (1 - t) x + t NN_phi(x, t)`` (``"interpolation"``, the form of the NFDM
    code) for any network ``NN(x [B, ...], t [B]) -> [B, ...]``.

    ``F(x, 0) = x`` holds by construction for every ``phi``. With the network's last layer at
    zero, the residual form starts from the identity (the DDPM forward process) and the
    interpolation form from ``F = (1 - t) x``. ``derivative`` (one of :data:`DERIVATIVES`)
    chooses how ``dF/dt`` is taken in training.
    """

    def __init__(
        self,
        net: Callable[[Tensor, Tensor], Tensor] | nn.Module,
        derivative: str = "jvp",
        form: str = "residual",
    ):
        super().__init__()
        if derivative not in DERIVATIVES:
            raise ValueError(f"unknown derivative {derivative!r}; choose one of {DERIVATIVES}")
        if form not in TRANSFORM_FORMS:
            raise ValueError(f"unknown transform form {form!r}; choose one of {TRANSFORM_FORMS}")
        self.net, self.derivative, self.form = net, derivative, form

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        t_ = per_example(t, x)
        kept = x if self.form == "residual" else (1 - t_) * x
        return kept + t_ * self.net(x, t)

    def _checkpointed_value_and_derivative(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """With a network that carries ``d NN / dt`` block by block
        (``value_and_time_derivative``, each block checkpointed): ``dF/dt = NN + t dNN/dt``
        (``- x`` in the interpolation form); else the whole call checkpointed."""
        if not hasattr(self.net, "value_and_time_derivative"):
            return super()._checkpointed_value_and_derivative(x, t)
        out, out_dot = self.net.value_and_time_derivative(x, t)
        t_ = per_example(t, x)
        if self.form == "residual":
            return x + t_ * out, out + t_ * out_dot
        return (1 - t_) * x + t_ * out, out + t_ * out_dot - x


def legendre_basis(t: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Shifted Legendre polynomials ``P_k(2t - 1)`` for ``k < size`` and their derivatives
    in ``t``, each ``[B, size]`` for ``t [B]``, by Bonnet's recursion
    ``(n + 1) P_{n+1}(u) = (2n + 1) u P_n(u) - n P_{n-1}(u)`` and
    ``P'_{n+1}(u) = P'_{n-1}(u) + (2n + 1) P_n(u)``, with ``d/dt = 2 d/du``."""
    if size < 1:
        raise ValueError(f"the basis needs at least one polynomial, got size {size}")
    u = 2 * t - 1
    polys, slopes = [torch.ones_like(u), u], [torch.zeros_like(u), torch.ones_like(u)]
    for n in range(1, size - 1):
        polys.append(((2 * n + 1) * u * polys[n] - n * polys[n - 1]) / (n + 1))
        slopes.append(slopes[n - 1] + (2 * n + 1) * polys[n])
    return torch.stack(polys[:size], 1), 2 * torch.stack(slopes[:size], 1)


class SeparableTransform(Transform):
    """``F_phi(x, t) = x + t sum_{k < K} P_k(2t - 1) G_phi(x)_k``: time enters through ``K``
    fixed shifted Legendre polynomials, the data through one network ``G`` of ``x`` alone.

    ``net(x [B, C, ...], t [B]) -> [B, K C, ...]`` is called at ``t = 0`` (its time input
    unused), its output read as ``K`` maps ``G_k`` of the shape of ``x``. Then
    ``dF/dt = sum_k (P_k + t dP_k/dt) G_k`` in closed form, and ``F`` at any number of times
    costs one network call: the discrete step needs ``G`` at ``x`` and ``x_hat`` only
    (five calls of a time-conditioned ``F``), the continuous step no Jacobian-vector
    product. ``F(x, 0) = x`` by construction; zero the network's last layer to start from
    the identity. The price is a time dependence of polynomial degree ``K`` in each
    component, where a time-conditioned network is free.
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor] | nn.Module, basis_size: int):
        super().__init__()
        if basis_size < 1:
            raise ValueError(f"basis_size must be at least 1, got {basis_size}")
        self.net, self.basis_size = net, basis_size

    def features(self, x: Tensor) -> Tensor:
        """``G(x)`` ``[B, K, ...]``, ``...`` the shape of an example of ``x``."""
        out = self.net(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        expected = (x.shape[0], self.basis_size * x.shape[1], *x.shape[2:])
        if tuple(out.shape) != expected:
            raise ValueError(
                f"the network of a separable transform with {self.basis_size} basis functions "
                f"must return {expected} for input {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        return out.reshape(x.shape[0], self.basis_size, *x.shape[1:])

    @staticmethod
    def _combine(weights: Tensor, features: Tensor) -> Tensor:
        """``sum_k w_k G_k``: ``[B, K]`` and ``[B, K, ...]`` -> ``[B, ...]``."""
        return torch.einsum("bk,bk...->b...", weights.to(features.dtype), features)

    def _at(self, x: Tensor, features: Tensor, t: Tensor) -> Tensor:
        polys, _ = legendre_basis(t, self.basis_size)
        return x + self._combine(t[:, None] * polys, features)

    def _with_derivative(self, x: Tensor, features: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        polys, slopes = legendre_basis(t, self.basis_size)
        value = x + self._combine(t[:, None] * polys, features)
        return value, self._combine(polys + t[:, None] * slopes, features)

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        return self._at(x, self.features(x), t)

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._with_derivative(x, self.features(x), t)

    def values(self, x: Tensor, times: Sequence[Tensor]) -> list[Tensor]:
        features = self.features(x)
        return [self._at(x, features, t) for t in times]

    def evaluate(
        self, x: Tensor, t: Tensor, times: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        features = self.features(x)
        value, derivative = self._with_derivative(x, features, t)
        return value, derivative, [self._at(x, features, time) for time in times]
