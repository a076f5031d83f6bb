"""Samplers of the reverse process. Stateless functions with one signature, found by name::

    sampler(process, predictor, z, grid, *, generator=None, **options) -> SampleResult

``z`` of shape ``[B, ...]`` is the starting latent at ``grid[0]`` (usually ``z_1 ~ N(0, I)``);
``grid`` is an explicit decreasing 1-D tensor of times from ``grid[0]`` to ``grid[-1] = 0``,
and a grid of ``N + 1`` points makes ``N`` steps. Each result reports its number of network
(predictor) evaluations ``nfe``. The sample returned is the decoder mean ``z_0 / alpha_0``.
An option a sampler does not take is a ``TypeError``, never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torchdiffeq import odeint

from ndm.diffusion.flow import ForwardProcess
from ndm.diffusion.predictors import Predictor, predict
from ndm.diffusion.transforms import per_example

ODE_METHODS = ("dopri5", "euler", "heun", "rk4", "midpoint")


@dataclass(frozen=True)
class SampleResult:
    """``sample`` (decoder mean, ``[B, ...]``), ``nfe`` and, if asked, ``trajectory [len(grid), B, ...]``."""

    sample: Tensor
    nfe: int
    trajectory: Tensor | None = None


class Sampler(Protocol):
    def __call__(
        self,
        process: ForwardProcess,
        predictor: Predictor,
        z: Tensor,
        grid: Tensor,
        *,
        generator: torch.Generator | None = None,
        **options: object,
    ) -> SampleResult: ...


SAMPLERS: dict[str, Sampler] = {}


def register(name: str) -> Callable[[Sampler], Sampler]:
    def add(fn: Sampler) -> Sampler:
        SAMPLERS[name] = fn
        return fn

    return add


def get_sampler(name: str) -> Sampler:
    """The sampler registered under ``name``; a clear error for an unknown one."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def time_grid(num_steps: int, t_max: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform decreasing grid ``t_max, ..., 0`` of ``num_steps + 1`` points."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    return torch.linspace(t_max, 0.0, num_steps + 1, dtype=dtype)


def _check_grid(grid: Tensor) -> None:
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(
            f"grid must be a 1-D tensor of at least 2 times, got shape {tuple(grid.shape)}"
        )
    if not bool((grid[1:] < grid[:-1]).all()) or float(grid[-1]) != 0.0:
        raise ValueError("grid must decrease strictly and end at t = 0")


def _decode(process: ForwardProcess, z0: Tensor) -> Tensor:
    alpha0, _ = process.data_end(z0)
    return z0 / per_example(alpha0, z0)


def _batch_time(t: Tensor, z: Tensor) -> Tensor:
    return t.to(z.dtype).expand(z.shape[0])


def _noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)


@torch.no_grad()
def _posterior_sampler(process, predictor, z, grid, generator, eta, keep_trajectory):
    _check_grid(grid)
    path = [z] if keep_trajectory else None
    for t_now, t_next in zip(grid[:-1], grid[1:], strict=True):
        t, s = _batch_time(t_now, z), _batch_time(t_next, z)
        prediction = predict(predictor, z, t)
        post = process.posterior(z, prediction.mean, s, t, eta)
        if eta == 1.0 and prediction.variance is not None:  # the trained reverse step
            std = process.reverse_variance(s, t, prediction.variance, z).sqrt()
        else:
            std = per_example(post.std, z)
        z = post.mean + std * _noise(z, generator)
        if path is not None:
            path.append(z)
    trajectory = torch.stack(path) if path is not None else None
    return SampleResult(_decode(process, z), grid.numel() - 1, trajectory)


@register("ddpm")
def ancestral(process, predictor, z, grid, *, generator=None, trajectory=False):
    """Algorithm 2: ``z_s ~ p_theta(z_s | z_t)``, the posterior ``q(z_s | z_t, x_hat)`` with the
    DDPM ``sigma_tilde`` (``eta = 1``), or with the reverse variance of a predictor that predicts
    ``Var[x | z_t]`` (:meth:`~ndm.diffusion.process.NeuralDiffusion.reverse_variance`)."""
    return _posterior_sampler(process, predictor, z, grid, generator, 1.0, trajectory)


@register("ddim")
def ddim(process, predictor, z, grid, *, generator=None, eta=0.0, trajectory=False):
    """Algorithm 2 with ``sigma_tilde = eta * (DDPM value)``, ``eta`` in ``[0, 1]``; ``eta = 0``
    is deterministic, and ``eta = 1`` is :func:`ancestral` (with a predicted variance too)."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
    return _posterior_sampler(process, predictor, z, grid, generator, float(eta), trajectory)


@register("sde")
@torch.no_grad()
def euler_maruyama(process, predictor, z, grid, *, generator=None, trajectory=False):
    """Euler-Maruyama on the reverse SDE ``dz = f(z, x_hat, t) dt + g dw`` from ``grid[0]`` to 0.
    Where ``g`` is infinite (``alpha_t = 0``, as at ``t = 1`` of flow matching) the step is
    the ancestral one, the SDE's exact step with ``x_hat`` held fixed."""
    _check_grid(grid)
    path = [z] if trajectory else None
    for t_now, t_next in zip(grid[:-1], grid[1:], strict=True):
        t = _batch_time(t_now, z)
        step = t_now - t_next
        g = process.g2(t).sqrt()
        if not bool(torch.isfinite(g).all()):
            post = process.posterior(z, predictor(z, t), _batch_time(t_next, z), t, 1.0)
            z = post.mean + per_example(post.std, z) * _noise(z, generator)
        else:
            drift = process.drift(z, predictor(z, t), t, stochastic=True)
            z = z - drift * step + per_example(g, z) * step.sqrt() * _noise(z, generator)
        if path is not None:
            path.append(z)
    result_path = torch.stack(path) if path is not None else None
    return SampleResult(_decode(process, z), grid.numel() - 1, result_path)


class CountingDrift(torch.nn.Module):
    """ODE right-hand side ``dz/dt = f(z, x_hat(z, t), t)`` (``nu`` constant) counting calls."""

    def __init__(self, process: ForwardProcess, predictor: Predictor):
        super().__init__()
        self.process, self.predictor, self.nfe = process, predictor, 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.nfe += 1
        time = _batch_time(t, z)
        return self.process.drift(z, self.predictor(z, time), time, stochastic=False)


def torchdiffeq_options(
    method: str, grid: Tensor, rtol: float, atol: float, max_steps: int | None = None
) -> dict:
    """Arguments of ``torchdiffeq.odeint`` for ``method``: adaptive ``dopri5`` uses
    ``rtol``/``atol`` (and at most ``max_steps`` steps, if given) and is made to step exactly
    onto the final time, so that no stage evaluates the schedule outside ``[0, 1]``;
    fixed-step methods take one step per grid interval."""
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {ODE_METHODS}")
    if not (0 < rtol < math.inf and 0 < atol < math.inf):
        raise ValueError(
            f"ODE tolerances must be positive and finite, got rtol={rtol}, atol={atol}"
        )
    if method == "dopri5":
        options: dict = {"step_t": grid[-1:]}
        if max_steps is not None:
            options["max_num_steps"] = max_steps
        return {"method": "dopri5", "rtol": rtol, "atol": atol, "options": options}
    name = "heun2" if method == "heun" else method
    return {"method": name, "options": {"grid_constructor": lambda *_: grid}}


def solve_ode(rhs: torch.nn.Module, state: object, times: Tensor, **options: object) -> object:
    """``torchdiffeq.odeint(rhs, state, times, **options)``; a solver that fails (the step
    size of an adaptive one underflows, as on a drift that is NaN or blows up) raises
    ``FloatingPointError`` naming the cause instead of torchdiffeq's ``AssertionError``."""
    try:
        return odeint(rhs, state, times, **options)
    except AssertionError as error:
        raise FloatingPointError(
            f"the ODE solver failed ({error}): the model's drift is not finite or not stable"
        ) from error


@register("ode")
def ode(
    process,
    predictor,
    z,
    grid,
    *,
    generator=None,
    method="dopri5",
    rtol=1e-5,
    atol=1e-5,
    trajectory=False,
):
    """Probability-flow ODE through torchdiffeq. ``dopri5`` is adaptive and returns the
    state at the grid points; ``euler``/``heun``/``rk4``/``midpoint`` step on ``grid``."""
    _check_grid(grid)
    rhs = CountingDrift(process, predictor)
    grid = grid.to(z.dtype)
    with torch.no_grad():
        states = solve_ode(rhs, z, grid, **torchdiffeq_options(method, grid, rtol, atol))
    return SampleResult(_decode(process, states[-1]), rhs.nfe, states if trajectory else None)
