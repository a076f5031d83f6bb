"""An oracle on continuous data: a Gaussian mixture, whose posterior given ``z_t`` is exact.

Each of ``D`` dimensions is drawn independently from
``p(x) = sum_k w_k N(x; m_k, s_k^2)``. With ``F = x`` (DDPM) and ``z_t = alpha_t x + sigma_t
eps``, the posterior is again a mixture, component by component::

    P(k | z) = softmax_k( log w_k + log N(z; alpha m_k, alpha^2 s_k^2 + sigma^2) )
    x | z, k ~ N(mu_k, v_k),  v_k = 1 / (1 / s_k^2 + alpha^2 / sigma^2),
                              mu_k = v_k (m_k / s_k^2 + alpha z / sigma^2)

so ``E[x | z_t]`` and ``Var[x | z_t]`` are exact, and the best DDPM of a given schedule and
grid is known: its bound's gap to the NLL is the room left for a learned ``F``. The
entropy of ``p`` comes from quadrature (:func:`scipy.integrate.quad`).
"""

from __future__ import annotations

import math

import torch
from scipy import integrate
from torch import Tensor, nn

from ndm.diffusion.predictors import Prediction
from ndm.diffusion.schedules import Schedule


class GaussianMixture:
    """``p(x) = sum_k w_k N(x; m_k, s_k^2)`` per dimension: ``weights``, ``means`` and
    ``stds`` are ``[K]`` (weights positive, summing to 1)."""

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor):
        weights, means, stds = (
            torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, stds)
        )
        if not weights.shape == means.shape == stds.shape or weights.dim() != 1:
            raise ValueError("weights, means and stds must be 1-D of one length")
        if (weights <= 0).any() or abs(float(weights.sum()) - 1) > 1e-9 or (stds <= 0).any():
            raise ValueError("weights must be positive and sum to 1, stds positive")
        self.weights, self.means, self.stds = weights, means, stds

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` of ``x [N, D]`` summed over dimensions, ``[N]`` (nats)."""
        u = (x.double()[..., None] - self.means) / self.stds
        log_components = (
            self.weights.log() - 0.5 * u**2 - self.stds.log() - 0.5 * math.log(2 * math.pi)
        )
        return torch.logsumexp(log_components, -1).sum(-1)

    def sample(self, n: int, dims: int, seed: int) -> Tensor:
        """``[n, dims]`` float64 draws from a generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.weights, n * dims, replacement=True, generator=generator)
        noise = torch.randn(n * dims, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * noise).view(n, dims)

    def entropy(self) -> float:
        """``H = -int p log p`` of one dimension, nats, by adaptive quadrature."""
        low = float((self.means - 12 * self.stds).min())
        high = float((self.means + 12 * self.stds).max())

        def integrand(x: float) -> float:
            log_p = float(self.log_prob(torch.tensor([[x]])))
            return -math.exp(log_p) * log_p

        points = self.means.tolist()
        value, _ = integrate.quad(integrand, low, high, points=points, limit=200, epsabs=1e-12)
        return value


class MixtureOracle(nn.Module):
    """The exact ``E[x | z_t]`` and ``Var[x | z_t]`` of :class:`GaussianMixture` data under
    ``F = x``: ``predict(z [B, D], t [B])`` returns both, so that the discrete bound's
    reverse variance (:meth:`ndm.diffusion.process.NeuralDiffusion.reverse_variance`) is the
    per-example optimum ``sigma_tilde^2 + E[Delta^2 | z_t]``."""

    def __init__(self, schedule: Schedule, mixture: GaussianMixture):
        super().__init__()
        self.schedule, self.mixture = schedule, mixture

    def moments(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(E[x | z_t], Var[x | z_t])``, each ``[B, D]``."""
        sched = self.schedule(t)
        alpha, sigma = (v.to(z.dtype)[:, None, None] for v in (sched.alpha, sched.sigma))
        w, m, s = (
            v.to(z.dtype) for v in (self.mixture.weights, self.mixture.means, self.mixture.stds)
        )
        zk = z[..., None]
        spread = alpha**2 * s**2 + sigma**2
        logits = w.log() - 0.5 * (zk - alpha * m) ** 2 / spread - 0.5 * spread.log()
        responsibility = torch.softmax(logits, -1)
        var_k = 1 / (1 / s**2 + alpha**2 / sigma**2)
        mean_k = var_k * (m / s**2 + alpha * zk / sigma**2)
        mean = (responsibility * mean_k).sum(-1)
        second = (responsibility * (var_k + mean_k**2)).sum(-1)
        return mean, (second - mean**2).clamp_min(0)

    def predict(self, z: Tensor, t: Tensor) -> Prediction:
        mean, var = self.moments(z, t)
        return Prediction(mean, var)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return self.moments(z, t)[0]
