"""Likelihood evaluation: NLL along the probability-flow ODE and the NELBO, in nats per example.

ODE (instantaneous change of variables), integrated from ``t = 0`` to ``t = 1``::

    log p_0(z_0) = log N(z_1; 0, I) + int_0^1 div_z f(z_t, t) dt,  z_0 = alpha_0 x,

and ``-log p(x) = -log p_0(alpha_0 x) - D log alpha_0`` (the change of scale to data space).
The divergence is exact (one backward pass per dimension) or Hutchinson's estimate
``v^T (df/dz) v`` with Rademacher probes ``v`` fixed along the path.

Bits per dimension: ``nats / (D ln 2)`` plus an optional offset (:func:`bits_per_dim`); a
density of dequantised ``L``-level data on ``[-1, 1]`` needs :func:`dequantisation_offset`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ndm.diffusion.decoders import Decoder, GaussianDecoder
from ndm.diffusion.flow import ForwardProcess
from ndm.diffusion.predictors import Predictor
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.timesampling import DEFAULT_TIME_SAMPLING
from ndm.diffusion.transforms import per_example
from ndm.losses.objectives import (
    LossTerms,
    continuous_nelbo_terms,
    discrete_diffusion_term,
    reconstruction_nll,
)
from ndm.sampling.samplers import CountingDrift, solve_ode, torchdiffeq_options

DIVERGENCES = ("exact", "hutchinson")


def bits_per_dim(nats: Tensor, dims: int, offset: float = 0.0) -> Tensor:
    """``nats / (D ln 2) + offset``: the one conversion from nats per example to bits/dim."""
    return nats / (dims * math.log(2)) + offset


def dequantisation_offset(num_levels: int) -> float:
    """``log2(L / 2)`` bits/dim: turns the NLL of a density over ``L``-level data uniformly
    dequantised onto ``[-1, 1]`` (bins of width ``2 / L``) into a bound on the discrete NLL,
    ``-log2 P(k) <= E_u[-log2 p((2 (k + u)) / L - 1)] + log2(L / 2)`` per dimension (7 bits
    for 8-bit images)."""
    return math.log2(num_levels / 2)


def _divergence(f: Tensor, z: Tensor, probes: Tensor | None) -> Tensor:
    """``div_z f`` per example: exact if ``probes`` is None, else Hutchinson with ``probes``."""
    if probes is not None:
        (vjp,) = torch.autograd.grad(f, z, probes, create_graph=False)
        return (vjp * probes).flatten(1).sum(1)
    flat_f = f.flatten(1)
    total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for d in range(flat_f.shape[1]):
        (grad,) = torch.autograd.grad(flat_f[:, d].sum(), z, retain_graph=True)
        total = total + grad.flatten(1)[:, d]
    return total


class _AugmentedDrift(torch.nn.Module):
    """``d/dt (z, log-det) = (f(z, t), div f(z, t))`` for the probability-flow ODE."""

    def __init__(self, drift: CountingDrift, probes: Tensor | None):
        super().__init__()
        self.drift, self.probes = drift, probes

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z = state[0]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            f = self.drift(t, z)
            div = _divergence(f, z, self.probes)
        return f.detach(), div.detach()


def ode_nll(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    *,
    divergence: str = "exact",
    num_probes: int = 1,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int = 100,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
) -> tuple[Tensor, int]:
    """``(-log p(x) [B] in nats, nfe)`` along the ODE. Hutchinson averages ``num_probes``
    independent solves. Fixed-step methods use ``num_steps`` uniform steps; dopri5 takes at
    most ``max_steps`` steps per solve, if given (more: ``FloatingPointError``)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
    if num_probes < 1 or num_steps < 1:
        raise ValueError(
            f"num_probes and num_steps must be positive, got {num_probes}, {num_steps}"
        )
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    alpha0, _ = process.data_end(x)
    z0 = per_example(alpha0, x) * x
    dims = x[0].numel()
    grid = torch.linspace(0.0, 1.0, num_steps + 1, dtype=x.dtype, device=x.device)
    ends = grid[[0, -1]]
    rhs = CountingDrift(process, predictor)
    opts = torchdiffeq_options(method, grid, rtol, atol, max_steps)
    estimates = []
    for _ in range(num_probes if divergence == "hutchinson" else 1):
        probes = None
        if divergence == "hutchinson":
            coin = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
            probes = coin.to(x.dtype) * 2 - 1
        z_t, logdet = solve_ode(_AugmentedDrift(rhs, probes), (z0, zero), ends, **opts)
        z1, integral = z_t[-1], logdet[-1]
        log_prior = -0.5 * (z1.flatten(1).pow(2).sum(1) + dims * math.log(2 * math.pi))
        estimates.append(-(log_prior + integral) - dims * alpha0.log())
    return torch.stack(estimates).mean(0), rhs.nfe


@torch.no_grad()
def discrete_nelbo(
    process: NeuralDiffusion,
    predictor: Predictor,
    x: Tensor,
    num_steps: int,
    decoder: Decoder | None = None,
    generator: torch.Generator | None = None,
    num_terms: int | None = None,
) -> LossTerms:
    """Discrete NELBO: the diffusion term ``sum_{i=1}^T L_{t_i}`` (one ``z_t`` per term).

    ``num_terms=None`` (or ``T``) sums all ``T`` terms exactly. ``num_terms = K < T`` (``K``
    dividing ``T``) cuts the steps into ``K`` blocks of ``B = T / K`` consecutive ones and
    sums the first block, the steps nearest the data whose jump to ``t = 0`` dominates the
    bound, exactly; each other block ``k`` adds ``B L_{t_{i_k}}`` with ``i_k`` uniform in it,
    drawn per example. The estimate is unbiased, costs ``B + K - 1`` network evaluations
    instead of ``T``, and its spread over examples gives its standard error.
    """
    terms = num_steps if num_terms is None else num_terms
    if terms < 1 or num_steps % terms:
        raise ValueError(f"num_terms must divide num_steps={num_steps}, got {num_terms}")
    block = num_steps // terms
    diffusion = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def add(index: Tensor, weight: int) -> None:
        nonlocal diffusion
        t = index.to(x.dtype) / num_steps
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        diffusion = diffusion + weight * discrete_diffusion_term(
            process, predictor, x, t - 1.0 / num_steps, t, noise
        )

    ones = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    for i in range(1, block + 1):  # the first block, every step
        add(i * ones, 1)
    for k in range(1, terms):
        offset = torch.randint(0, block, (x.shape[0],), generator=generator).to(x.device)
        add(k * block + 1 + offset, block)
    rec = reconstruction_nll(process, x, decoder or GaussianDecoder(), generator)
    return LossTerms(process.prior_kl(x), diffusion, rec)


def continuous_nelbo(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    num_time_samples: int = 64,
    time_sampling: str = DEFAULT_TIME_SAMPLING,
    decoder: Decoder | None = None,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Continuous NELBO, its diffusion term averaged over ``num_time_samples`` Monte Carlo
    draws of ``(t, z_t)`` per example. Draw ``k`` takes its time from the quantile stratum
    ``[k / K, (k + 1) / K)`` of ``p(t)``, which keeps the estimate unbiased and lowers its
    variance."""
    draws = []
    strata = num_time_samples
    for k in range(strata):
        u = (k + torch.rand(x.shape[0], generator=generator, dtype=x.dtype)) / strata
        with torch.no_grad():
            terms = continuous_nelbo_terms(
                process, predictor, x, time_sampling, decoder, generator, u=u.to(x.device)
            )
        draws.append(terms)
    return LossTerms(
        draws[0].prior,
        torch.stack([d.diffusion for d in draws]).mean(0),
        torch.stack([d.reconstruction for d in draws]).mean(0),
    )
