"""How much a generative flow transports: map cost, exact optimal transport cost, straightness.

Points are float tensors ``[N, D]``; costs are in squared data units, means over points.

- Cost of a map given as pairs ``x_i -> y_i``: ``mean_i ||y_i - x_i||^2``.
- Exact optimal transport cost between two samples of ``N`` points each with weights
  ``1 / N``: ``min_P sum_ij P_ij ||x_i - y_j||^2`` over couplings ``P`` with marginals
  ``1 / N``; an optimum is a permutation (Birkhoff), so it is at most the cost of any pairing.
  In 1-D the sorted pairing is optimal: ``mean_i (x_(i) - y_(i))^2``; in any dimension
  the network simplex of POT (``ot.emd2``) solves it exactly.
- A path ``z_t`` recorded at times ``t_0, ..., t_S`` (``[S + 1]``, monotone) with its velocity
  ``dz/dt`` at those times, both ``[S + 1, B, D]``: the kinetic energy
  ``E = int ||dz/dt||^2 dt`` and length ``L = int ||dz/dt|| dt`` by the trapezoid rule over
  ``|dt|``, and two straightness ratios per path, each 1 exactly for a straight path:

  * ``path_straightness = ||z_end - z_start||^2 / (|t_S - t_0| E)``: by Cauchy-Schwarz at
    most 1, with equality only for a straight path at constant speed;
  * ``chord_length_ratio = ||z_end - z_start|| / L``: at most 1 (triangle inequality),
    with equality for any straight path that does not turn back, whatever its speed.

  On a unit time interval, the kinetic energy averaged over paths is at least the squared
  Wasserstein-2 distance between the end distributions (Benamou-Brenier), with equality for
  the optimal transport dynamics.

:func:`probability_flow_paths` records the paths of the probability-flow ODE of a model
with the velocity evaluated from the process's drift along them (the sampler's own
right-hand side), which the trapezoid rule then integrates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot
import torch
from torch import Tensor

from ndm.diffusion.flow import ForwardProcess
from ndm.diffusion.predictors import Predictor
from ndm.sampling.samplers import CountingDrift, get_sampler


def _check_points(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, D] with N, D > 0, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or inf values")


def _check_pair(x: Tensor, y: Tensor) -> None:
    _check_points("x", x)
    _check_points("y", y)
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape [N, D], got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def map_transport_cost(x: Tensor, y: Tensor) -> float:
    """``mean_i ||y_i - x_i||^2`` of the map ``x_i -> y_i``; ``x``, ``y``: ``[N, D]``."""
    _check_pair(x, y)
    return float((y.double() - x.double()).pow(2).sum(1).mean())


def ot_cost_1d(x: Tensor, y: Tensor) -> float:
    """Exact optimal transport cost between two 1-D samples ``[N, 1]`` with weights
    ``1 / N`` (squared distance): ``mean_i (x_(i) - y_(i))^2`` of the sorted values."""
    _check_pair(x, y)
    if x.shape[1] != 1:
        raise ValueError(f"sorting solves 1-D transport only; got points of dimension {x.shape[1]}")
    xs, ys = torch.sort(x.double()[:, 0]).values, torch.sort(y.double()[:, 0]).values
    return float((xs - ys).pow(2).mean())


def ot_cost_emd(x: Tensor, y: Tensor, max_iterations: int = 10_000_000) -> float:
    """Exact optimal transport cost between two samples ``[N, D]`` with weights ``1 / N``
    and cost ``||x_i - y_j||^2``: POT's network simplex ``ot.emd2``. Raises
    ``RuntimeError`` if the solver stops before the optimum (``max_iterations``)."""
    _check_pair(x, y)
    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    weights = np.full(a.shape[0], 1.0 / a.shape[0])
    cost_matrix = ot.dist(a, b, metric="sqeuclidean")
    cost, log = ot.emd2(weights, weights, cost_matrix, numItermax=max_iterations, log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"ot.emd2 did not reach the optimum: {log['warning']}")
    return float(cost)


def exact_ot_cost(x: Tensor, y: Tensor) -> float:
    """Exact optimal transport cost between samples ``[N, D]``: sorting if ``D = 1``, else
    POT's network simplex."""
    _check_pair(x, y)
    return ot_cost_1d(x, y) if x.shape[1] == 1 else ot_cost_emd(x, y)


def _check_path(path: Tensor, velocity: Tensor, times: Tensor) -> None:
    if not isinstance(times, Tensor) or times.dim() != 1 or times.numel() < 2:
        raise ValueError("times must be a 1-D tensor of at least 2 times")
    steps = times[1:] - times[:-1]
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError("times must be strictly monotone")
    for name, value in (("path", path), ("velocity", velocity)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 2:
            raise ValueError(f"{name} must be a floating-point tensor [S + 1, B, ...]")
        if value.shape[0] != times.numel():
            raise ValueError(f"{name} has {value.shape[0]} time points, times has {times.numel()}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} holds NaN or inf values")
    if path.shape != velocity.shape:
        raise ValueError(
            f"path and velocity must have the same shape, got {tuple(path.shape)} and "
            f"{tuple(velocity.shape)}"
        )
    if not bool(torch.isfinite(times).all()):
        raise ValueError("times holds NaN or inf values")


def _integrate(values: Tensor, times: Tensor) -> Tensor:
    """Trapezoid rule ``int values dt`` over ``|dt|`` along dim 0: ``[S + 1, B] -> [B]``."""
    return torch.trapezoid(values, x=times.to(values).reshape(-1, 1), dim=0).abs()


def kinetic_energy(velocity: Tensor, times: Tensor) -> Tensor:
    """``int ||dz/dt||^2 dt`` per path, ``[B]``, from ``velocity [S + 1, B, ...]`` at
    ``times [S + 1]`` (trapezoid rule)."""
    _check_path(velocity, velocity, times)
    return _integrate(velocity.flatten(2).pow(2).sum(2), times)


def path_length(velocity: Tensor, times: Tensor) -> Tensor:
    """``int ||dz/dt|| dt`` per path, ``[B]`` (trapezoid rule)."""
    _check_path(velocity, velocity, times)
    return _integrate(velocity.flatten(2).norm(dim=2), times)


def _chord(path: Tensor) -> Tensor:
    return (path[-1] - path[0]).flatten(1).norm(dim=1)


def path_straightness(path: Tensor, velocity: Tensor, times: Tensor) -> Tensor:
    """``||z_end - z_start||^2 / (|t_end - t_start| int ||dz/dt||^2 dt)`` per path, ``[B]``:
    1 for a straight path at constant speed, below 1 otherwise. ``path`` and ``velocity``:
    ``[S + 1, B, ...]`` at ``times [S + 1]``. A path that does not move raises ``ValueError``."""
    _check_path(path, velocity, times)
    energy = kinetic_energy(velocity, times)
    if not bool((energy > 0).all()):
        raise ValueError("straightness is undefined for a path with zero kinetic energy")
    duration = (times[-1] - times[0]).abs().to(energy)
    return _chord(path).pow(2) / (duration * energy)


def chord_length_ratio(path: Tensor, velocity: Tensor, times: Tensor) -> Tensor:
    """``||z_end - z_start|| / int ||dz/dt|| dt`` per path, ``[B]``: 1 for a straight path
    at any speed. A path that does not move raises ``ValueError``."""
    _check_path(path, velocity, times)
    length = path_length(velocity, times)
    if not bool((length > 0).all()):
        raise ValueError("the chord-length ratio is undefined for a path of zero length")
    return _chord(path) / length


@dataclass(frozen=True)
class FlowPaths:
    """Probability-flow ODE paths from ``t = 1`` to ``t = 0``: ``times [S + 1]`` (decreasing),
    ``path`` and ``velocity`` ``[S + 1, B, ...]``, and the solver's network evaluations ``nfe``
    (the velocity evaluations along the recorded path are not counted)."""

    times: Tensor
    path: Tensor
    velocity: Tensor
    nfe: int


@torch.no_grad()
def probability_flow_paths(
    process: ForwardProcess,
    predictor: Predictor,
    z1: Tensor,
    times: Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> FlowPaths:
    """Integrate the probability-flow ODE from ``z1 [B, ...]`` at ``times[0] = 1`` down to
    ``times[-1] = 0`` with adaptive dopri5 (the ``ode`` sampler), record ``z_t`` at ``times``
    and evaluate the ODE's velocity ``dz/dt = f(z_t, x_hat(z_t, t), t)`` there."""
    result = get_sampler("ode")(
        process, predictor, z1, times, method="dopri5", rtol=rtol, atol=atol, trajectory=True
    )
    path = result.trajectory
    drift = CountingDrift(process, predictor)
    velocity = torch.stack([drift(t, z) for t, z in zip(times.to(z1), path, strict=True)])
    return FlowPaths(times, path, velocity, result.nfe)
