"""NDM variational objectives, returned as named per-example terms in nats.

Discrete time with ``T`` steps (eq. 9, 10), grid ``t_i = i / T``, ``s = t_{i-1}``: with the
mean gap ``Delta = alpha_s (F(x,s) - F(x_hat,s)) - c alpha_t (F(x,t) - F(x_hat,t))``, the
posterior variance ``v_q = sigma_tilde^2`` and the reverse variance ``v_p``
(:meth:`ndm.diffusion.process.NeuralDiffusion.reverse_variance`), per dimension ``d``::

    L_t = sum_d 1/2 [ v_q / v_p - 1 - log(v_q / v_p) + Delta_d^2 / v_p ]

which is eq. (10), ``||Delta||^2 / (2 sigma_tilde^2)``, when ``v_p = v_q``

and the diffusion term is ``sum_i L_{t_i}``, estimated in training by ``T L_t`` at one random
step per example. Continuous time (eq. 11 with the sign and the ``1/2`` of math.md)::

    L_diff = E_{t ~ p(t)} || f(z_t, x, t) - f(z_t, x_hat, t) ||^2 / (2 g^2(t) p(t))

with the reverse SDE drift ``f`` of :mod:`ndm.diffusion.gaussian`: NDM's (``nu = gamma``) or
an NFDM's (:mod:`ndm.diffusion.flow`), which takes the continuous objective only.

A deterministic reverse process (``g = 0``, the probability-flow ODE alone) has no NELBO: the
weight ``1 / (2 g^2)`` is infinite. It trains by matching the ODE velocities instead,
flow matching's loss with the velocity written through ``x_hat``::

    L_vel = E_{t ~ p(t)} || f_ode(z_t, x, t) - f_ode(z_t, x_hat, t) ||^2 / p(t)

Optional penalties, not part of the NELBO, along the forward marginals
``t ~ U[0, 1]``, ``z_t ~ q(z_t | x)``, with the model's probability-flow velocity
``v(z, t) = f_ode(z, x_hat(z, t), t)``: its kinetic energy ``E ||v(z_t, t)||^2``; the squared
acceleration of the generative ODE's paths, ``E ||dv/dt||^2`` with
``dv/dt = dv/dt|_z + (dv/dz) v`` (NFDM-OT's curvature penalty); and the squared acceleration
of the forward process's own conditional paths, ``E ||d^2 z_t / dt^2||^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ndm.diffusion.decoders import Decoder, GaussianDecoder
from ndm.diffusion.flow import ForwardProcess
from ndm.diffusion.gaussian import GaussianPath, drift_matching, ode_velocity
from ndm.diffusion.predictors import Predictor, predict
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.timesampling import DEFAULT_TIME_SAMPLING, sample_times
from ndm.diffusion.transforms import per_example


@dataclass(frozen=True)
class LossTerms:
    """Per-example NELBO terms in nats, each of shape ``[B]``."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor

    @property
    def total(self) -> Tensor:
        """``prior + diffusion + reconstruction``, ``[B]``."""
        return self.prior + self.diffusion + self.reconstruction

    def as_dict(self) -> dict[str, Tensor]:
        return {
            "prior": self.prior,
            "diffusion": self.diffusion,
            "reconstruction": self.reconstruction,
            "total": self.total,
        }


def reconstruction_nll(
    process: ForwardProcess,
    x: Tensor,
    decoder: Decoder,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``-log p(x | z_0)`` with ``z_0 ~ q(z_0 | x) = N(alpha_0 x, sigma_0^2 I)``, ``[B]``.

    The boundary conditions (``F(x, 0) = x``; an NFDM's ``mu(x, 0) = x``) hold by
    construction, so no network is evaluated.
    """
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    alpha0, sigma0 = process.data_end(x)
    z0 = per_example(alpha0, x) * x + per_example(sigma0, x) * noise
    return decoder.nll(x, z0, alpha0, sigma0)


def normal_kl(mean_gap: Tensor, var_q: Tensor, var_p: Tensor) -> Tensor:
    """``KL(N(m_q, v_q I) || N(m_p, v_p I))`` summed over dimensions, ``[B]``:
    ``1/2 sum_d [v_q / v_p - 1 - log(v_q / v_p) + (m_q - m_p)_d^2 / v_p]``; ``mean_gap = m_q - m_p``
    of shape ``[B, ...]``, the variances broadcastable against it."""
    # v_q / v_p - 1 - log(v_q / v_p) = -e - log(1 - e) with e = 1 - v_q / v_p, accurate near 0
    excess = ((var_p - var_q) / var_p).expand_as(mean_gap)
    per_dim = 0.5 * (-excess - torch.log1p(-excess) + mean_gap**2 / var_p)
    return per_dim.flatten(1).sum(1)


def discrete_diffusion_term(
    process: NeuralDiffusion,
    predictor: Predictor,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    noise: Tensor,
    transformed: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One KL term ``L_t`` with the DDPM ``sigma_tilde`` and the predictor's reverse variance
    (the posterior's without a predicted variance: eq. 10), per example ``[B]``;
    ``transformed = (F(x, s), F(x, t))`` if the caller has them."""
    sched_s, sched_t, c, std = process.posterior_coefficients(s, t, eta=1.0)
    fx_s, fx_t = process.transform.values(x, [s, t]) if transformed is None else transformed
    a_s, a_t, c_ = (per_example(v, x) for v in (sched_s.alpha, sched_t.alpha, c))
    z_t = a_t * fx_t + per_example(sched_t.sigma, x) * noise
    prediction = predict(predictor, z_t, t)
    fh_s, fh_t = process.transform.values(prediction.mean, [s, t])
    diff = a_s * (fx_s - fh_s) - c_ * a_t * (fx_t - fh_t)
    var_p = process.reverse_variance(s, t, prediction.variance, x)
    return normal_kl(diff, per_example(std**2, x), var_p)


def discrete_nelbo_terms(
    process: NeuralDiffusion,
    predictor: Predictor,
    x: Tensor,
    num_steps: int,
    decoder: Decoder | None = None,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Training estimate of the discrete NELBO: ``T L_t`` at one uniform step per example.
    ``F(x, .)`` at ``s``, ``t`` and 1 (the prior's) is asked for in one call."""
    index = torch.randint(1, num_steps + 1, (x.shape[0],), generator=generator, device=x.device)
    t = index.to(x.dtype) / num_steps
    s = t - 1.0 / num_steps
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    fx_s, fx_t, fx_1 = process.transform.values(x, [s, t, torch.ones_like(t)])
    diffusion = num_steps * discrete_diffusion_term(
        process, predictor, x, s, t, noise, (fx_s, fx_t)
    )
    return LossTerms(
        process.prior_kl(x, fx_1),
        diffusion,
        reconstruction_nll(process, x, decoder or GaussianDecoder(), generator),
    )


def continuous_diffusion_integrand(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    t: Tensor,
    noise: Tensor,
    path: GaussianPath | None = None,
) -> Tensor:
    """``|| f~(z_t, x, t) - f~(z_t, x_hat, t) ||^2 / (2 g^2(t))`` per example, ``[B]``, with
    ``z_t = mu(x, t) + sigma(x, t) noise`` (:func:`ndm.diffusion.gaussian.drift_matching`);
    ``path = process.path(x, t)`` if the caller has it."""
    path = process.path(x, t) if path is None else path
    z_t = path.sample(noise)
    x_hat = predictor(z_t, t)
    return drift_matching(path, process.path(x_hat, t), z_t, process.g2(t))


def continuous_nelbo_terms(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    time_sampling: str = DEFAULT_TIME_SAMPLING,
    decoder: Decoder | None = None,
    generator: torch.Generator | None = None,
    u: Tensor | None = None,
) -> LossTerms:
    """Continuous-time NELBO with one time per example drawn by ``time_sampling`` (the
    ``u``-quantile of ``p(t)`` if ``u [B]`` is given, see :func:`ndm.diffusion.timesampling.sample_times`)
    and the integrand divided by ``p(t)``. The path of ``x`` at ``t`` and the prior term
    come from one call of the process (:meth:`~ndm.diffusion.process.NeuralDiffusion.evaluate`)."""
    t, density = sample_times(process.schedule, x.shape[0], time_sampling, x, generator, u=u)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    path, prior = process.evaluate(x, t)
    integrand = continuous_diffusion_integrand(process, predictor, x, t, noise, path)
    return LossTerms(
        prior,
        integrand / density,
        reconstruction_nll(process, x, decoder or GaussianDecoder(), generator),
    )


def uniform_time_and_noise(
    x: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(t ~ U[0, 1] [B], noise ~ N(0, I)`` of the shape of ``x``), drawn in that order from
    ``generator``: the draws of the penalties and of the simple noise loss."""
    t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return t, noise


def model_velocity(process: ForwardProcess, predictor: Predictor, z: Tensor, t: Tensor) -> Tensor:
    """The model's probability-flow velocity ``v(z, t) = f_ode(z, x_hat(z, t), t)``, shape
    of ``z``."""
    return process.drift(z, predictor(z, t), t, stochastic=False)


def velocity_matching_loss(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    time_sampling: str = DEFAULT_TIME_SAMPLING,
    generator: torch.Generator | None = None,
    u: Tensor | None = None,
) -> Tensor:
    """``|| f_ode(z_t, x, t) - f_ode(z_t, x_hat, t) ||^2 / p(t)`` per example, ``[B]``, at one
    time per example drawn by ``time_sampling`` (as :func:`continuous_nelbo_terms`) and
    ``z_t = mu(x, t) + sigma(x, t) noise``: an unbiased estimate of
    ``int_0^1 E_z ||f_ode(z_t, x, t) - f_ode(z_t, x_hat, t)||^2 dt``, the loss of a
    deterministic reverse process (``g = 0``). Not a bound on the likelihood; the ODE NLL
    scores the model it trains. With flow matching's process (``fm_ot``, ``F = x``) it is
    conditional flow matching's loss: ``f_ode(z_t, x, t) = (1 - sigma_min) eps - x``."""
    t, density = sample_times(process.schedule, x.shape[0], time_sampling, x, generator, u=u)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    path = process.path(x, t)
    z_t = path.sample(noise)
    x_hat = predictor(z_t, t)
    gap = ode_velocity(path, z_t) - ode_velocity(process.path(x_hat, t), z_t)
    return gap.flatten(1).pow(2).sum(1) / density


def kinetic_energy_penalty(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``||v(z_t, t)||^2`` per example ``[B]`` at one ``t ~ U[0, 1]`` and ``z_t ~ q(z_t | x)``,
    ``v`` the probability-flow velocity of the model: an unbiased estimate of
    ``int_0^1 E ||v(z_t, t)||^2 dt``. Its gradient reaches the predictor and the transform."""
    t, noise = uniform_time_and_noise(x, generator)
    z_t, _ = process.marginal(x, t, noise)
    return model_velocity(process, predictor, z_t, t).flatten(1).pow(2).sum(1)


def curvature_penalty(
    process: ForwardProcess,
    predictor: Predictor,
    x: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``|| dv/dt ||^2`` per example ``[B]`` at one ``t ~ U[0, 1]`` and ``z_t ~ q(z_t | x)``:
    the squared acceleration of the model's generative ODE ``dz = v(z, t) dt``,
    ``v(z, t) = f_ode(z, x_hat(z, t), t)``, along its own path through ``z_t``::

        dv/dt = dv/dt|_z + (dv/dz) v

    from one ``torch.func.jvp`` of ``v`` in ``(z, t)`` along ``(v, 1)``. Zero exactly when
    every path the ODE generates is a straight line travelled at constant speed, which one
    Euler step then integrates exactly (NFDM-OT's penalty). ``v`` depends on the predictor
    and, through ``f_ode``, on the forward process: the gradient reaches both, and the
    tangent ``v`` is differentiated too."""
    t, noise = uniform_time_and_noise(x, generator)
    z_t, _ = process.marginal(x, t, noise)

    def velocity(z: Tensor, time: Tensor) -> Tensor:
        return model_velocity(process, predictor, z, time)

    tangent = (velocity(z_t, t), torch.ones_like(t))
    _, acceleration = torch.func.jvp(velocity, (z_t, t), tangent)
    return acceleration.flatten(1).pow(2).sum(1)


def straightness_penalty(
    process: ForwardProcess, x: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """``|| d^2 z_t / dt^2 ||^2`` per example ``[B]`` at one ``t ~ U[0, 1]``: the squared
    acceleration of the conditional path ``z_t = mu(x, t) + sigma(x, t) eps`` at fixed
    ``x`` and ``eps``, from two nested ``torch.func.jvp`` in ``t``. Zero exactly when every
    conditional path is a straight line travelled at constant speed, as flow matching's
    are. It shapes the forward process only; :func:`curvature_penalty` straightens the
    paths the model generates."""
    t, noise = uniform_time_and_noise(x, generator)
    one = torch.ones_like(t)

    def position(time: Tensor) -> Tensor:
        return process.marginal(x, time, noise)[0]

    def velocity(time: Tensor) -> Tensor:
        return torch.func.jvp(position, (time,), (one,))[1]

    _, acceleration = torch.func.jvp(velocity, (t,), (one,))
    return acceleration.flatten(1).pow(2).sum(1)


def simple_noise_loss(
    process: NeuralDiffusion,
    predictor: Predictor,
    x: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDPM's ``|| eps - eps_hat ||^2`` per example, ``eps_hat = (z_t - alpha_t F(x_hat, t)) / sigma_t``.

    Not a bound on the likelihood. Refuses a learned transform: minimising it drives
    ``F`` to 0 (paper, section 6).
    """
    if process.transform.is_learned:
        raise ValueError(
            "the simple noise loss collapses a learned transform to 0; "
            "use the full NELBO objective with a learned F"
        )
    t, noise = uniform_time_and_noise(x, generator)
    sched = process.schedule(t)
    z_t, _ = process.marginal(x, t, noise)
    x_hat = predictor(z_t, t)
    alpha, sigma = per_example(sched.alpha, x), per_example(sched.sigma, x)
    eps_hat = (z_t - alpha * process.transform.value(x_hat, t)) / sigma
    return (noise - eps_hat).flatten(1).pow(2).sum(1)
