"""Neural Flow Diffusion Models: a Gaussian forward process whose mean, scale and volatility
are all learned (Bartosh, Vetrov and Naesseth, NeurIPS 2024).

``q(z_t | x) = N(mu_phi(x, t), sigma_phi(x, t)^2)`` per dimension, around a reference
schedule ``alpha_t, sigma_t`` and with the boundary conditions built in::

    mu        = alpha_t x + t (1 - t) mu_bar(x, t)
    log sigma = log sigma_t + t (1 - t) log_sigma_bar(x, t)

so ``z_0 ~ N(alpha_0 x, sigma_0^2 I)`` whatever the network (the decoder ``p(x | z_0)``
stays the standard one) and ``z_1`` is the schedule's (the prior term is VDM's).
``mu_bar`` and ``log_sigma_bar`` are the two halves (dimension 1) of one network's output.
The authors' code anchors at ``alpha_t = 1 - t`` (the ``fm_ot`` schedule) and a geometric
``sigma``; anchoring at the schedule a run's DDPM baseline uses makes an untrained NFDM that
baseline exactly, as an untrained NDM is. The volatility ``g_phi(t) > 0`` is learned
relative to NDM's (:class:`LearnedVolatility`) or fixed (:class:`ScheduleVolatility`). The
drifts, score and objective are those of :mod:`ndm.diffusion.gaussian`, shared with NDM.

A :class:`FlowDiffusion` takes any :class:`~ndm.diffusion.transforms.Transform` whose value
is ``[mu, log sigma]`` stacked on dimension 1: :class:`MeanScaleTransform` is the learned
one, and a fixed one (``mu = alpha_t F(x, t)``, ``log sigma = log sigma_t``) makes an NDM,
DDPM, VDM or flow-matching process of it. The time derivatives come from the transform
(one ``torch.func.jvp`` in ``t``, or double backward).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F_nn
from torch import Tensor, nn

from ndm.diffusion.gaussian import GaussianPath, reverse_drift, standard_normal_kl
from ndm.diffusion.process import NeuralDiffusion, Posterior, schedule_start
from ndm.diffusion.schedules import Schedule
from ndm.diffusion.transforms import DERIVATIVES, Transform, per_example


class MeanScaleTransform(Transform):
    """``(x, t) -> [mu, log sigma]`` stacked on dimension 1 (``[B, 2 C, ...]`` for ``x`` of
    ``[B, C, ...]``) around a reference schedule ``alpha_t, sigma_t`` and a network
    ``net(x, t) -> [mu_bar, log_sigma_bar]`` of ``[B, 2 C, ...]``::

        mu = alpha_t x + t (1 - t) mu_bar(x, t),
        log sigma = log sigma_t + t (1 - t) log_sigma_bar(x, t).

    The process matches the schedule's at ``t = 0`` and ``t = 1`` whatever the network, and
    with the network's output layer at zero it is the schedule's process with ``F = x``
    (VDM's, or DDPM's). With the ``fm_ot`` schedule the mean is the authors' code's
    ``(1 - t) x + t (1 - t) mu_bar``."""

    def __init__(
        self,
        net: Callable[[Tensor, Tensor], Tensor] | nn.Module,
        schedule: Schedule,
        derivative: str = "jvp",
    ):
        super().__init__()
        if derivative not in DERIVATIVES:
            raise ValueError(f"unknown derivative {derivative!r}; choose one of {DERIVATIVES}")
        self.net, self.schedule, self.derivative = net, schedule, derivative

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        sched = self.schedule(t)
        alpha, sigma, t_ = (per_example(v, x) for v in (sched.alpha, sched.sigma, t))
        mean_bar, log_std_bar = self.net(x, t).chunk(2, dim=1)
        mean = alpha * x + t_ * (1 - t_) * mean_bar
        log_std = sigma.log() + t_ * (1 - t_) * log_std_bar
        return torch.cat([mean, log_std.expand_as(mean)], dim=1)


class ScheduleVolatility(nn.Module):
    """NDM's volatility ``g^2 = gamma'_t sigma_t^2`` of a schedule: ``t [B] -> g^2 [B]``."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, t: Tensor) -> Tensor:
        return self.schedule(t).g2


class LearnedVolatility(ScheduleVolatility):
    """``g^2(t) = gamma'_t sigma_t^2 softplus(NN(t))`` for a reference schedule and a small
    MLP of ``t`` (``hidden`` units, two hidden layers): ``t [B] -> g^2 [B]``. It starts at
    the schedule's NDM volatility (the multiplier is 1) and learns any positive function of
    ``t`` from there; carrying ``sigma_t^2`` keeps ``g^2`` on the scale the bound needs
    near ``t = 0``, where ``sigma`` is small and a constant ``g`` makes the integrand
    ``~ g^2 ||mu - mu_hat||^2 / sigma^4`` explode."""

    def __init__(self, schedule: Schedule, hidden: int = 64):
        super().__init__(schedule)
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.fill_(math.log(math.e - 1))  # softplus(bias) = 1

    def forward(self, t: Tensor) -> Tensor:
        return super().forward(t) * F_nn.softplus(self.net(t[:, None])).squeeze(1)


class FlowDiffusion(nn.Module):
    """A Gaussian forward process from a transform ``(x, t) -> [mu, log sigma]`` and a
    volatility ``g^2(t)``, with the interface of
    :class:`~ndm.diffusion.process.NeuralDiffusion` that the objectives, samplers and
    likelihood use.

    ``schedule`` is the reference schedule, whose ends the transform must keep,
    ``q(z_0 | x) = N(alpha_0 x, sigma_0^2 I)`` (:class:`MeanScaleTransform` does by
    construction): the decoder, the predictor's parameterisation and the time sampling of
    the objective use it (any ``p(t)`` keeps the estimate unbiased)."""

    def __init__(
        self,
        transform: Transform,
        volatility: Callable[[Tensor], Tensor] | nn.Module,
        schedule: Schedule,
    ):
        super().__init__()
        # the schedule first: its parameters (learned end points) are named as the process's
        self.schedule, self.transform, self.volatility = schedule, transform, volatility

    def path(self, x: Tensor, t: Tensor) -> GaussianPath:
        """``q(z_t | x)`` with its time derivatives, from one call of the transform."""
        value, derivative = self.transform(x, t)
        mean, log_std = value.chunk(2, dim=1)
        d_mean, d_log_std = derivative.chunk(2, dim=1)
        std = log_std.exp()
        return GaussianPath(mean, std, d_mean, std * d_log_std)

    def g2(self, t: Tensor) -> Tensor:
        """The volatility ``g^2(t)``, ``[B]``."""
        return self.volatility(t)

    def data_end(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_0, sigma_0)`` of the reference schedule, each ``[B]``:
        ``q(z_0 | x) = N(alpha_0 x, sigma_0^2 I)``."""
        return schedule_start(self.schedule, like)

    def _mean_and_log_std(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu(x, t), log sigma(x, t))``, each of the shape of ``x``, without derivatives."""
        mean, log_std = self.transform.value(x, t).chunk(2, dim=1)
        return mean, log_std

    def marginal(self, x: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_t, mu(x, t))`` with ``z_t = mu + sigma noise``."""
        mean, log_std = self._mean_and_log_std(x, t)
        return mean + log_std.exp() * noise, mean

    def data_transform(self, x: Tensor, t: Tensor) -> Tensor:
        """``mu(x, t) / alpha_t``, shape of ``x``: the ``F`` an NDM on the reference schedule
        would need for this mean (``x`` for an untrained NFDM; 0 where ``alpha_t = 0``)."""
        mean, _ = self._mean_and_log_std(x, t)
        alpha = per_example(self.schedule(t).alpha, x)
        return mean / alpha.clamp_min(torch.finfo(alpha.dtype).tiny)

    def log_scale_ratio(self, x: Tensor, t: Tensor) -> Tensor:
        """``log(sigma(x, t) / sigma_t)``, shape of ``x``: how far the learned scale is from
        the reference schedule's (0 at ``t = 0`` and ``t = 1`` by construction, and
        everywhere for an untrained NFDM or a fixed process on the schedule)."""
        _, log_std = self._mean_and_log_std(x, t)
        return log_std - per_example(self.schedule(t).sigma, x).log()

    def prior_kl(self, x: Tensor) -> Tensor:
        """``KL(q(z_1 | x) || N(0, I))`` per example, ``[B]``, in nats (the reference
        schedule's for ``F = x`` with a :class:`MeanScaleTransform`)."""
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        mean, log_std = self._mean_and_log_std(x, one)
        return standard_normal_kl(mean, log_std.exp())

    def evaluate(self, x: Tensor, t: Tensor) -> tuple[GaussianPath, Tensor]:
        """``(path at t, prior KL [B])``."""
        return self.path(x, t), self.prior_kl(x)

    def drift(self, z: Tensor, x_prime: Tensor, t: Tensor, stochastic: bool = True) -> Tensor:
        """Reverse-time drift ``f~(z, x', t)`` (``stochastic``) or the ODE velocity
        ``f_ode(z, x', t)``, shape of ``z``."""
        return reverse_drift(self.path(x_prime, t), z, self.g2(t) if stochastic else 0.0)

    def posterior(
        self, z_t: Tensor, x: Tensor, s: Tensor, t: Tensor, eta: float = 0.0
    ) -> Posterior:
        """The deterministic step ``z_s = mu_s + (sigma_s / sigma_t) (z_t - mu_t)``, which
        keeps ``z_s ~ q(z_s | x)`` for every Gaussian process (DDIM's step, ``eta = 0``);
        pass ``x_hat`` for ``x``. A stochastic step needs NDM's schedule: use the SDE."""
        if eta != 0.0:
            raise ValueError(
                "an NFDM process has no DDPM posterior; sample with 'ddim' (eta 0), 'sde' or 'ode'"
            )
        (mean_s, log_std_s), (mean_t, log_std_t) = (
            v.chunk(2, dim=1) for v in self.transform.values(x, [s, t])
        )
        mean = mean_s + (log_std_s - log_std_t).exp() * (z_t - mean_t)
        return Posterior(mean, torch.zeros_like(s))


#: A forward process the continuous objective, the samplers and the likelihood take.
ForwardProcess = NeuralDiffusion | FlowDiffusion
