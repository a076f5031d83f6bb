"""Gaussian data ``x ~ N(mu, Sigma)`` under an affine transform, where everything is closed form.

With ``F(x, t) = A_t x + b_t`` the marginal is ``z_t ~ N(alpha (A_t mu + b_t), alpha^2 A_t Sigma A_t^T
+ sigma^2 I)`` and the posterior mean ``E[x | z_t] = mu + K_t (z_t - alpha (A_t mu + b_t))`` with
``K_t = alpha Sigma A_t^T (alpha^2 A_t Sigma A_t^T + sigma^2 I)^{-1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ndm.data.toy2d import GAUSSIAN_COV as COV
from ndm.data.toy2d import GAUSSIAN_MEAN as MEAN
from ndm.diffusion.schedules import Schedule
from ndm.diffusion.transforms import AffineTransform, IdentityTransform

MATRIX = torch.tensor([[0.3, -0.2], [0.1, -0.4]], dtype=torch.float64)
SHIFT = torch.tensor([0.5, -0.3], dtype=torch.float64)


def affine_parts(transform: nn.Module, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(A_t [B, D, D], b_t [B, D])`` of an identity or affine transform."""
    eye = torch.eye(2, dtype=t.dtype).expand(t.shape[0], 2, 2)
    if isinstance(transform, IdentityTransform):
        return eye, torch.zeros(t.shape[0], 2, dtype=t.dtype)
    assert isinstance(transform, AffineTransform)
    return eye + t[:, None, None] * transform.matrix, t[:, None] * transform.shift


class ExactGaussianPredictor(nn.Module):
    """``x_hat(z, t) = E[x | z_t = z]`` for Gaussian data, shape ``[B, 2]``."""

    def __init__(self, schedule: Schedule, transform: nn.Module):
        super().__init__()
        self.schedule, self.transform = schedule, transform

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        sched = self.schedule(t)
        a, b = affine_parts(self.transform, t)
        alpha, sigma = sched.alpha[:, None, None], sched.sigma[:, None, None]
        mu = MEAN.to(z.dtype)
        cov = COV.to(z.dtype)
        mean_z = sched.alpha[:, None] * ((a @ mu) + b)
        cov_z = alpha**2 * a @ cov @ a.transpose(1, 2) + sigma**2 * torch.eye(2, dtype=z.dtype)
        gain = alpha * cov @ a.transpose(1, 2) @ torch.linalg.inv(cov_z)
        return mu + (gain @ (z - mean_z)[:, :, None])[:, :, 0]


def exact_nll(x: Tensor, extra_var: float) -> Tensor:
    """``-log N(x; mu, Sigma + extra_var I)`` per example, ``[B]``."""
    cov = COV.to(x.dtype) + extra_var * torch.eye(2, dtype=x.dtype)
    dist = torch.distributions.MultivariateNormal(MEAN.to(x.dtype), cov)
    return -dist.log_prob(x)


def sample_data(n: int, seed: int = 0) -> Tensor:
    """``n`` float64 draws of ``N(mu, Sigma)``."""
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(COV)
    return MEAN + torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T
