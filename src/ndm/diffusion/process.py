"""The NDM forward process: a schedule combined with a transform.

``q(z_t | x) = N(alpha_t F(x, t), sigma_t^2 I)`` (eq. 7) and, for ``s < t``, the posterior
of eq. (8)::

    q(z_s | z_t, x) = N(alpha_s F(x, s) + c (z_t - alpha_t F(x, t)), sigma_tilde^2 I),
    c = sqrt(sigma_s^2 - sigma_tilde^2) / sigma_t,
    sigma_tilde^2 = eta^2 sigma_s^2 (1 - exp(gamma_s - gamma_t)).

``eta = 1`` is the DDPM (Markovian, ``nu = gamma``) choice and ``eta = 0`` DDIM.

The reverse step ``p_theta(z_s | z_t)`` takes the posterior's mean at ``x_hat``; its variance
is a free choice that keeps the NELBO a bound (:meth:`NeuralDiffusion.reverse_variance`): the
posterior's ``sigma_tilde^2`` (eq. 10), or with a predicted ``v_hat = Var_theta[x | z_t]`` the
variance ``sigma_tilde^2 + (alpha_s - c alpha_t)^2 v_hat`` that ``q(z_s | z_t)`` has for
``F = x`` (moment matching, as Analytic-DPM and improved DDPM).

In continuous time, with ``nu = lambda * gamma`` (``lambda = 1``: reverse SDE,
``lambda = 0``: ODE), the reverse-time drift of the process conditioned on ``x'`` is::

    f(z, x', t) = alpha dF/dt + r z - 1/2 (d sigma^2/dt - 2 r sigma^2 + g^2) s(x', z, t)
               = alpha' F + alpha dF/dt + (sigma' + g^2 / (2 sigma)) eps',

with ``s = (alpha F - z) / sigma^2``, ``eps' = (z - alpha F) / sigma`` and ``g^2 = lambda gamma' sigma^2``.
The second form never divides by ``alpha``. It is the reverse drift of
:mod:`ndm.diffusion.gaussian` for the path ``mu = alpha F``, ``sigma = sigma_t``
(:meth:`NeuralDiffusion.path`), which is how it is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ndm.diffusion.gaussian import GaussianPath, reverse_drift, standard_normal_kl
from ndm.diffusion.schedules import Schedule, ScheduleValues
from ndm.diffusion.transforms import Transform, per_example


@dataclass(frozen=True)
class Posterior:
    """Gaussian ``N(mean, std^2 I)``: ``mean`` of shape ``[B, ...]``, ``std`` of shape ``[B]``."""

    mean: Tensor
    std: Tensor


class NeuralDiffusion(nn.Module):
    """Schedule plus transform: marginals, posteriors, drifts and the prior term."""

    def __init__(self, schedule: Schedule, transform: Transform):
        super().__init__()
        self.schedule, self.transform = schedule, transform

    def marginal(self, x: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_t, F(x, t))`` with ``z_t = alpha_t F(x, t) + sigma_t noise``."""
        sched = self.schedule(t)
        fx = self.transform.value(x, t)
        return per_example(sched.alpha, x) * fx + per_example(sched.sigma, x) * noise, fx

    def data_transform(self, x: Tensor, t: Tensor) -> Tensor:
        """``F(x, t)``, shape of ``x``: what the process does to the data, before noise."""
        return self.transform.value(x, t)

    def posterior_coefficients(
        self, s: Tensor, t: Tensor, eta: float = 1.0
    ) -> tuple[ScheduleValues, ScheduleValues, Tensor, Tensor]:
        """Schedules at ``s`` and ``t``, ``c`` and ``sigma_tilde`` (each ``[B]``) of eq. (8)."""
        sched_s, sched_t = self.schedule(s), self.schedule(t)
        var_tilde = -(eta**2) * sched_s.sigma**2 * torch.expm1(sched_s.gamma - sched_t.gamma)
        c = (sched_s.sigma**2 - var_tilde).clamp_min(0).sqrt() / sched_t.sigma
        return sched_s, sched_t, c, var_tilde.sqrt()

    def posterior(
        self, z_t: Tensor, x: Tensor, s: Tensor, t: Tensor, eta: float = 1.0
    ) -> Posterior:
        """``q(z_s | z_t, x)`` of eq. (8); pass ``x_hat`` for ``x`` to get ``p_theta(z_s | z_t)``."""
        sched_s, sched_t, c, std = self.posterior_coefficients(s, t, eta)
        f_s, f_t = self.transform.values(x, [s, t])
        a_s, a_t, c = (per_example(v, x) for v in (sched_s.alpha, sched_t.alpha, c))
        return Posterior(a_s * f_s + c * (z_t - a_t * f_t), std)

    def reverse_variance(
        self, s: Tensor, t: Tensor, variance: Tensor | None, like: Tensor, eta: float = 1.0
    ) -> Tensor:
        """Variance of ``p_theta(z_s | z_t)``: ``sigma_tilde^2 + (alpha_s - c alpha_t)^2 v_hat``
        per dimension (``[B, ...]``) for a predicted ``variance = v_hat``, else ``sigma_tilde^2``
        broadcast as ``[B, 1, ..., 1]`` against ``like``."""
        sched_s, sched_t, c, std = self.posterior_coefficients(s, t, eta)
        var_tilde = per_example(std**2, like)
        if variance is None:
            return var_tilde
        gain = per_example(sched_s.alpha - c * sched_t.alpha, like)
        return var_tilde + gain**2 * variance

    def path(
        self, x: Tensor, t: Tensor, transformed: tuple[Tensor, Tensor] | None = None
    ) -> GaussianPath:
        """``q(z_t | x)`` with its time derivatives: ``mu = alpha F``, ``sigma = sigma_t``,
        ``dmu/dt = alpha' F + alpha dF/dt``; ``transformed = (F(x, t), dF/dt(x, t))`` if the
        caller has them."""
        sched = self.schedule(t)
        f, df_dt = self.transform(x, t) if transformed is None else transformed
        return schedule_path(sched, f, df_dt)

    def g2(self, t: Tensor) -> Tensor:
        """The volatility ``g^2 = gamma' sigma^2`` of the Markovian choice ``nu = gamma``, ``[B]``."""
        return self.schedule(t).g2

    def data_end(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_0, sigma_0)``, each ``[B]``: ``q(z_0 | x) = N(alpha_0 x, sigma_0^2 I)``
        (``F(x, 0) = x``) for ``like [B, ...]``."""
        return schedule_start(self.schedule, like)

    def evaluate(self, x: Tensor, t: Tensor) -> tuple[GaussianPath, Tensor]:
        """``(path at t, prior KL [B])``: ``F(x, .)`` and ``dF/dt`` at ``t`` and ``F(x, 1)``
        in one call of the transform."""
        fx, dfx, (fx_1,) = self.transform.evaluate(x, t, [torch.ones_like(t)])
        return self.path(x, t, (fx, dfx)), self.prior_kl(x, fx_1)

    def drift(self, z: Tensor, x_prime: Tensor, t: Tensor, stochastic: bool = True) -> Tensor:
        """Reverse-time drift ``f(z, x', t)``: the SDE one (``nu = gamma``) or, if not
        ``stochastic``, the ODE one (``nu`` constant). Shape of ``z``."""
        sched = self.schedule(t)
        f, df_dt = self.transform(x_prime, t)
        return reverse_drift(schedule_path(sched, f, df_dt), z, sched.g2 if stochastic else 0.0)

    def prior_kl(self, x: Tensor, f_1: Tensor | None = None) -> Tensor:
        """``KL(N(alpha_1 F(x, 1), sigma_1^2 I) || N(0, I))`` per example, ``[B]``, in nats;
        ``f_1 = F(x, 1)`` if the caller has it."""
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        sched = self.schedule(one)
        f_1 = self.transform.value(x, one) if f_1 is None else f_1
        return standard_normal_kl(per_example(sched.alpha, x) * f_1, per_example(sched.sigma, x))


def schedule_start(schedule: Schedule, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha_0, sigma_0)`` of ``schedule``, each ``[B]`` for ``like [B, ...]``."""
    zero = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    sched = schedule(zero)
    return sched.alpha, sched.sigma


def schedule_path(sched: ScheduleValues, f: Tensor, df_dt: Tensor) -> GaussianPath:
    """The path of ``N(alpha_t F, sigma_t^2 I)`` from the schedule at ``t`` and ``F``,
    ``dF/dt`` (``[B, ...]``)."""
    alpha, d_alpha, sigma, d_sigma = (
        per_example(v, f) for v in (sched.alpha, sched.d_alpha, sched.sigma, sched.d_sigma)
    )
    return GaussianPath(alpha * f, sigma, d_alpha * f + alpha * df_dt, d_sigma)
