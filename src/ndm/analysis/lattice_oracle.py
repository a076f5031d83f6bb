"""An oracle for checking likelihoods: lattice data whose posterior over the levels is exact.

Each of ``D`` dimensions takes the value ``v_k = (2 k + 1) / L - 1`` (the bin centres of ``L``
levels in ``[-1, 1]``) with probability ``pi_k``, independently; the entropy is
``D H(pi)``. Under a per-dimension affine transform ``F_d(x, t) = (1 + t m_d) x + t b_d``
(``m = b = 0``: the identity), ``z_t,d = alpha_t F_d(x_d, t) + sigma_t eps_d`` and

    P(x_d = v_k | z_t) = softmax_k( log pi_k - (z_t,d - alpha_t F_d(v_k, t))^2 / (2 sigma_t^2) ),

so ``E[x | z_t]`` and ``Var[x | z_t]`` are exact. Dequantised (``x`` uniform within the bin of
its level), the density is ``pi_k L / 2`` on bin ``k``, and the posterior is a mixture over the
bins of normals truncated to them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.special import log_ndtr

from ndm.diffusion.decoders import CategoricalDecoder
from ndm.diffusion.predictors import Prediction
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import Schedule
from ndm.diffusion.transforms import AffineTransform, IdentityTransform
from ndm.losses.objectives import discrete_nelbo_terms

SLOPE, SHIFT = 0.4, -0.2  # the affine transform's m_d and b_d, alternating in sign over d


def level_probabilities(num_levels: int, skewed: bool) -> Tensor:
    """``pi [L]``: uniform, or 40% of the mass on level 0 and the rest spread evenly."""
    if not skewed:
        return torch.full((num_levels,), 1.0 / num_levels, dtype=torch.float64)
    probs = torch.full((num_levels,), 0.6 / (num_levels - 1), dtype=torch.float64)
    probs[0] = 0.4
    return probs


def centres(num_levels: int) -> Tensor:
    """``v [L]``: the bin centres ``(2 k + 1) / L - 1``."""
    return (2 * torch.arange(num_levels, dtype=torch.float64) + 1) / num_levels - 1


def entropy_nats(probs: Tensor) -> float:
    """``H(pi)`` of one dimension, nats."""
    return float(-(probs * probs.log()).sum())


def make_transform(affine: bool, dims: int) -> nn.Module:
    """The identity, or the per-dimension affine ``F_d = (1 + t m_d) x + t b_d``."""
    if not affine:
        return IdentityTransform()
    sign = torch.tensor([(-1.0) ** d for d in range(dims)], dtype=torch.float64)
    return AffineTransform(torch.diag(SLOPE * sign), SHIFT * sign)


def affine_coefficients(transform: nn.Module, dims: int) -> tuple[Tensor, Tensor]:
    """``(m [D], b [D])`` of :func:`make_transform`'s transforms."""
    if isinstance(transform, IdentityTransform):
        zeros = torch.zeros(dims, dtype=torch.float64)
        return zeros, zeros
    return torch.diagonal(transform.matrix), transform.shift


def sample_levels(probs: Tensor, n: int, dims: int, seed: int) -> Tensor:
    """Integer levels ``[n, D]`` drawn from ``pi``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, n * dims, replacement=True, generator=generator).view(n, dims)


class LatticeOracle(nn.Module):
    """The exact ``E[x | z_t]`` and the NELBO-optimal reverse variance of lattice data.

    ``predict(z [B, D], t [B])`` returns the posterior mean and ``v_hat`` with which
    ``reverse_variance`` gives ``sigma_tilde^2 + E[Delta_d^2 | z_t]``, the per-example optimum,
    for steps ``s = t - 1 / num_steps`` (``v_hat = Var[x | z_t]`` for the identity).
    ``dequantised``: the posterior of the dequantised density instead.
    """

    def __init__(
        self,
        schedule: Schedule,
        transform: nn.Module,
        probs: Tensor,
        num_steps: int | None = None,
        dequantised: bool = False,
    ):
        super().__init__()
        self.schedule, self.transform, self.num_steps = schedule, transform, num_steps
        self.dequantised = dequantised
        self.register_buffer("log_probs", probs.log())
        self.register_buffer("levels", centres(probs.numel()))

    def _scale_shift(self, t: Tensor, dims: int) -> tuple[Tensor, Tensor]:
        """``(1 + t m, t b)``, each ``[B, D]``."""
        m, b = affine_coefficients(self.transform, dims)
        return 1 + t[:, None] * m.to(t.dtype), t[:, None] * b.to(t.dtype)

    def moments(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(E[x | z_t], Var[x | z_t])``, each ``[B, D]``."""
        sched = self.schedule(t)
        scale, shift = self._scale_shift(t, z.shape[1])
        alpha, sigma = sched.alpha[:, None, None], sched.sigma[:, None, None]
        # z = alpha (scale x + shift) + sigma eps: x given z and its bin is N(mu, tau^2) there
        mu = ((z - sched.alpha[:, None] * shift) / (sched.alpha[:, None] * scale))[..., None]
        tau = (sigma / (alpha * scale[..., None])).abs()
        v = self.levels.to(z.dtype)
        if not self.dequantised:
            logits = self.log_probs.to(z.dtype) - (mu - v) ** 2 / (2 * tau**2)
            weights = torch.softmax(logits, -1)
            mean = (weights * v).sum(-1)
            return mean, ((weights * v**2).sum(-1) - mean**2).clamp_min(0)
        half = 1.0 / v.numel()
        lo, hi = (v - half - mu) / tau, (v + half - mu) / tau
        log_mass = _log_normal_mass(lo, hi)
        weights = torch.softmax(self.log_probs.to(z.dtype) + log_mass, -1)
        # moments of N(mu, tau^2) truncated to [lo, hi] (standardised)
        pdf_lo, pdf_hi = _normal_pdf(lo), _normal_pdf(hi)
        mass = log_mass.exp().clamp_min(1e-300)
        r1 = (pdf_lo - pdf_hi) / mass
        r2 = (_times(lo, pdf_lo) - _times(hi, pdf_hi)) / mass
        within_mean = (mu + tau * r1).clamp(v - half, v + half)
        within_var = (tau**2 * (1 + r2 - r1**2)).clamp(0, (2 * half) ** 2 / 12)
        mean = (weights * within_mean).sum(-1)
        second = (weights * (within_var + within_mean**2)).sum(-1)
        return mean, (second - mean**2).clamp_min(0)

    def predict(self, z: Tensor, t: Tensor) -> Prediction:
        mean, var = self.moments(z, t)
        if self.num_steps is None:
            return Prediction(mean)
        s = t - 1.0 / self.num_steps
        process = NeuralDiffusion(self.schedule, self.transform)
        sched_s, sched_t, c, _ = process.posterior_coefficients(s, t)
        scale_s, _ = self._scale_shift(s, z.shape[1])
        scale_t, _ = self._scale_shift(t, z.shape[1])
        gain_f = sched_s.alpha[:, None] * scale_s - (c * sched_t.alpha)[:, None] * scale_t
        gain = (sched_s.alpha - c * sched_t.alpha)[:, None]
        return Prediction(mean, var * (gain_f / gain) ** 2)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return self.moments(z, t)[0]


def _normal_pdf(u: Tensor) -> Tensor:
    return torch.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)


def _times(u: Tensor, pdf: Tensor) -> Tensor:
    """``u * pdf(u)``, 0 at infinite ``u``."""
    return torch.where(torch.isfinite(u), u * pdf, torch.zeros_like(pdf))


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, accurate in both tails."""
    upper = lo > 0  # use the symmetry Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    log_b, log_a = log_ndtr(b), log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b).clamp_max(1 - 1e-16))


def smoothed_nll(x: Tensor, probs: Tensor, scale: float) -> Tensor:
    """``-log p_0(x)`` per example ``[B]`` for ``x [B, D]``, where ``p_0`` is the dequantised
    density convolved with ``N(0, scale^2)``, the density of ``z_0 / alpha_0`` (``scale =
    sigma_0 / alpha_0``): ``p_0(x) = sum_k pi_k (L / 2) [Phi((hi_k - x) / s) - Phi((lo_k - x) / s)]``."""
    v = centres(probs.numel()).to(x.dtype)
    half = 1.0 / v.numel()
    hi, lo = (v + half - x[..., None]) / scale, (v - half - x[..., None]) / scale
    log_mass = _log_normal_mass(lo, hi) + probs.log().to(x.dtype) + math.log(v.numel() / 2)
    return -torch.logsumexp(log_mass, -1).sum(1)


def fit_endpoints(
    process: NeuralDiffusion,
    oracle: LatticeOracle,
    probs: Tensor,
    num_steps: int,
    dims: int,
    steps: int = 100,
    batch: int = 256,
    lr: float = 0.05,
) -> tuple[float, float]:
    """Train the learned end points of ``process.schedule`` (only them; the oracle follows
    the schedule) on the training estimate of the discrete NELBO of ``batch`` fresh examples
    per step, with the categorical decoder and Adam; return them as ``(gamma_min,
    gamma_max)``. Each draw is seeded by its step."""
    schedule = process.schedule
    params = list(schedule.endpoints.parameters())
    if not params:
        raise ValueError("the schedule has no learned end points to fit")
    optimizer = torch.optim.Adam(params, lr=lr)
    values = centres(probs.numel()).to(params[0].dtype)
    decoder = CategoricalDecoder(probs.numel())
    for step in range(steps):
        levels = sample_levels(probs, batch, dims, seed=10_000 + step)
        generator = torch.Generator().manual_seed(step)
        loss = discrete_nelbo_terms(
            process, oracle, values[levels], num_steps, decoder, generator
        ).total.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return schedule.endpoints.values()
