"""The maths every Gaussian forward process shares, NDM's and NFDM's alike.

A Gaussian forward process has the marginals ``q(z_t | x) = N(mu(x, t), sigma(x, t)^2)``,
per dimension, and is written ``z_t = mu + sigma eps``. With its time derivatives (a
:class:`GaussianPath`), everything the objectives and samplers need follows (math.md,
"The generalisation")::

    f_ode(z, x, t) = dmu/dt + (dsigma/dt / sigma) (z - mu)     (the flow carrying eps to z_t)
    s(z, x, t)     = (mu - z) / sigma^2                         (the score of q(z_t | x))
    f~(z, x, t)    = f_ode - g^2 / 2 s                          (the reverse-time drift)

For any volatility ``g(t) >= 0`` the forward SDE ``dz = [f_ode + g^2 / 2 s] dt + g dW`` keeps
the marginals, and the diffusion term of the continuous NELBO is
``E_t E_z || f~(z, x, t) - f~(z, x_hat, t) ||^2 / (2 g^2)`` (eq. 11 with the sign and the
``1/2`` of math.md). NDM is the case ``mu = alpha_t F(x, t)``, ``sigma = sigma_t``,
``g^2 = gamma'_t sigma_t^2`` (:meth:`ndm.diffusion.process.NeuralDiffusion.path`), and an
NFDM learns ``mu``, ``sigma`` and ``g`` (:mod:`ndm.diffusion.flow`): both evaluate the
functions of this module, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ndm.diffusion.transforms import per_example


@dataclass(frozen=True)
class GaussianPath:
    """``q(z_t | x) = N(mean, std^2)`` at one ``t`` per example, with ``d/dt`` of both.

    ``mean`` and ``d_mean`` have the shape of ``x`` (``[B, ...]``); ``std`` and ``d_std``
    broadcast against it (``[B, ...]``, or ``[B, 1, ..., 1]`` when ``sigma`` does not
    depend on ``x``)."""

    mean: Tensor
    std: Tensor
    d_mean: Tensor
    d_std: Tensor

    def sample(self, noise: Tensor) -> Tensor:
        """``z_t = mean + std * noise``, ``[B, ...]``."""
        return self.mean + self.std * noise


def ode_velocity(path: GaussianPath, z: Tensor) -> Tensor:
    """``f_ode = dmu/dt + (dsigma/dt / sigma) (z - mu)``, shape of ``z``."""
    return path.d_mean + path.d_std * (z - path.mean) / path.std


def score(path: GaussianPath, z: Tensor) -> Tensor:
    """``grad_z log q(z_t | x) = (mu - z) / sigma^2``, shape of ``z``."""
    return (path.mean - z) / path.std**2


def reverse_drift(path: GaussianPath, z: Tensor, g2: Tensor | float) -> Tensor:
    """``f~ = f_ode - g^2 / 2 s = dmu/dt + (dsigma/dt + g^2 / (2 sigma)) (z - mu) / sigma``,
    the reverse-time drift with volatility ``g2 = g^2`` (``[B]``, or 0 for the ODE), shape of
    ``z``; the second form never squares ``sigma``."""
    g2 = per_example(g2, z) if isinstance(g2, Tensor) else g2
    return path.d_mean + (path.d_std + 0.5 * g2 / path.std) * (z - path.mean) / path.std


def drift_matching(path: GaussianPath, path_hat: GaussianPath, z: Tensor, g2: Tensor) -> Tensor:
    """``|| f~(z, x, t) - f~(z, x_hat, t) ||^2 / (2 g^2)`` per example, ``[B]``: the integrand
    of the continuous NELBO's diffusion term, for ``path`` of ``x``, ``path_hat`` of
    ``x_hat`` and ``g2 [B]``."""
    gap = reverse_drift(path, z, g2) - reverse_drift(path_hat, z, g2)
    return gap.flatten(1).pow(2).sum(1) / (2 * g2)


def standard_normal_kl(mean: Tensor, std: Tensor) -> Tensor:
    """``KL(N(mean, std^2) || N(0, I))`` summed over dimensions, ``[B]`` in nats:
    ``1/2 sum_d [mean_d^2 + std_d^2 - 1 - log std_d^2]``; ``std`` broadcasts against
    ``mean [B, ...]``."""
    var = std.expand_as(mean) ** 2
    return 0.5 * (mean**2 + var - 1 - var.log()).flatten(1).sum(1)
