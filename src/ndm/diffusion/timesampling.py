"""Densities ``p(t)`` on ``[0, 1]`` for Monte Carlo estimates of the continuous-time NELBO.

- ``uniform``: ``t ~ U[0, 1]``.
- ``stratified``: one uniform draw in each of ``B`` equal strata, shuffled (``p(t) = 1``).
- ``importance``: ``p(t)`` proportional to ``1 / g^2(t)`` (the paper's choice).
- ``gamma``: ``p(t)`` proportional to ``gamma'(t)``, i.e. uniform in ``gamma`` (VDM's choice).

The last two are tabulated as piecewise-constant densities on ``num_cells`` equal cells,
recomputed at every call so that a learned schedule is followed, and drawn by inverting
their distribution function; the estimator divides by the exact density of that
piecewise-constant law, so it stays unbiased. Passing the uniform variates ``u`` lets an
evaluation stratify them (one per stratum of ``[0, 1]``) whatever the density.

Drawn times lie in ``[0, 1)``: a draw that rounds to ``t = 1`` (``u = 1``, or a float32
quotient rounding up) is moved to the largest float below 1, a change on a set of measure
zero that leaves ``p(t)`` as it is. At ``t = 1`` a schedule may end with ``alpha_1 = 0``
(``fm_ot``), where the integrand is not finite; ``t = 0`` is harmless since every schedule
keeps ``sigma_0 > 0`` and ``alpha_0 > 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ndm.diffusion.schedules import Schedule

TIME_SAMPLINGS = ("uniform", "stratified", "importance", "gamma")
#: The ``p(t)`` of every continuous-time estimate unless one is named: uniform in ``gamma``.
DEFAULT_TIME_SAMPLING = "gamma"


def _cell_weights(schedule: Schedule, method: str, num_cells: int, like: Tensor) -> Tensor:
    """Probability of each cell ``[num_cells]`` in float64: a float32 running sum of them
    reaches 1 early and leaves the last cells, which keep their mass, never drawn."""
    mids = (torch.arange(num_cells, dtype=like.dtype, device=like.device) + 0.5) / num_cells
    with torch.no_grad():
        sched = schedule(mids)
        weights = (1.0 / sched.g2 if method == "importance" else sched.d_gamma).double()
    return weights / weights.sum()


def sample_times(
    schedule: Schedule,
    batch: int,
    method: str,
    like: Tensor,
    generator: torch.Generator | None = None,
    num_cells: int = 1000,
    u: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(t, p(t))``, both ``[batch]``, with dtype and device of ``like``; ``t`` is the
    ``u``-quantile of ``p`` (``u ~ U[0, 1]`` drawn here unless given), kept below 1."""
    opts = {"dtype": like.dtype, "device": like.device}
    # the largest float below 1 (1 - eps / 2 is exact in every binary floating type)
    below_one = 1.0 - torch.finfo(like.dtype).eps / 2
    if method not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {method!r}; choose one of {TIME_SAMPLINGS}")
    if u is None:
        u = torch.rand(batch, generator=generator, **opts)
        if method == "stratified":
            order = torch.randperm(batch, generator=generator, device=like.device)
            u = (order.to(like.dtype) + u) / batch
    if method in ("uniform", "stratified"):
        return u.clamp_max(below_one), torch.ones(batch, **opts)
    mass = _cell_weights(schedule, method, num_cells, like)
    upper = mass.cumsum(0)
    u64 = u.double()
    cell = torch.searchsorted(upper, u64).clamp_max(num_cells - 1)
    within = ((u64 - (upper[cell] - mass[cell])) / mass[cell]).clamp(0, 1)
    t = ((cell.double() + within) / num_cells).to(like.dtype).clamp_max(below_one)
    return t, (mass[cell] * num_cells).to(like.dtype)
