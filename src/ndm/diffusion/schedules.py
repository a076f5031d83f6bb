"""Noise schedules: ``alpha_t``, ``sigma_t`` and their time derivatives.

Conventions (shared by the whole package): time ``t`` lies in ``[0, 1]``, ``t = 0`` is
the data side and ``t = 1`` the noise side; ``t`` is a tensor of shape ``[B]``. The
negative log signal-to-noise ratio ``gamma_t = log(sigma_t^2 / alpha_t^2)`` increases
with ``t``. Every schedule keeps ``sigma_0 > 0`` so that ``gamma_0`` and the
reconstruction term stay finite.

A variance-preserving schedule is defined by ``gamma`` alone:
``alpha^2 = sigmoid(-gamma)``, ``sigma^2 = sigmoid(gamma)``, hence
``d alpha/dt = -alpha sigma^2 gamma' / 2`` and ``d sigma/dt = sigma alpha^2 gamma' / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_nn
from torch import Tensor, nn


@dataclass(frozen=True)
class ScheduleValues:
    """Schedule quantities at times ``t``, each of shape ``[B]``.

    ``d_*`` are derivatives in ``t``. Derived quantities are properties so that one
    formula serves every schedule.
    """

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor
    gamma: Tensor
    d_gamma: Tensor

    @property
    def r(self) -> Tensor:
        """``r_t = d log(alpha_t) / dt``."""
        return self.d_alpha / self.alpha

    @property
    def d_sigma2(self) -> Tensor:
        """``d sigma_t^2 / dt = 2 sigma_t d sigma_t / dt``."""
        return 2 * self.sigma * self.d_sigma

    @property
    def g2(self) -> Tensor:
        """Diffusion coefficient of the Markovian choice ``nu = gamma``: ``g^2 = gamma' sigma^2``.

        Equals ``d sigma^2/dt - 2 r sigma^2`` (eq. 6) for every schedule.
        """
        return self.d_gamma * self.sigma**2


class Schedule(nn.Module):
    """Base class: ``schedule(t)`` returns :class:`ScheduleValues` for ``t`` of shape ``[B]``."""

    def forward(self, t: Tensor) -> ScheduleValues:  # pragma: no cover - abstract
        raise NotImplementedError


class VariancePreservingSchedule(Schedule):
    """A schedule defined by ``gamma_t`` and ``gamma'_t``, with ``alpha^2 + sigma^2 = 1``."""

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, t: Tensor) -> ScheduleValues:
        gamma, d_gamma = self.gamma_and_derivative(t)
        alpha2, sigma2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        alpha, sigma = alpha2.sqrt(), sigma2.sqrt()
        return ScheduleValues(
            alpha=alpha,
            sigma=sigma,
            d_alpha=-0.5 * alpha * sigma2 * d_gamma,
            d_sigma=0.5 * sigma * alpha2 * d_gamma,
            gamma=gamma,
            d_gamma=d_gamma,
        )


class LinearVPSchedule(VariancePreservingSchedule):
    """DDPM / score-SDE VP schedule with ``beta(u) = beta_min + (beta_max - beta_min) u``.

    ``alpha^2 = exp(-B(u))``, ``B(u) = beta_min u + (beta_max - beta_min) u^2 / 2``, so
    ``gamma = log(expm1(B))`` and ``gamma' = beta(u) / (1 - exp(-B)) du/dt``. The clock
    ``u = t_min + (1 - t_min) t`` starts at score-SDE's ``t_min`` so that ``sigma_0 > 0``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5):
        super().__init__()
        if not 0 < t_min < 1 or beta_min <= 0 or beta_max < beta_min:
            raise ValueError(
                f"need 0 < t_min < 1 and 0 < beta_min <= beta_max, got t_min={t_min}, "
                f"beta_min={beta_min}, beta_max={beta_max}"
            )
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        du_dt = 1.0 - self.t_min
        u = self.t_min + du_dt * t
        big_b = self.beta_min * u + 0.5 * (self.beta_max - self.beta_min) * u**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * u
        return torch.log(torch.expm1(big_b)), beta / -torch.expm1(-big_b) * du_dt


class GammaEndpoints(nn.Module):
    """The end points ``gamma_0 = gamma_min < gamma_1 = gamma_max`` of a schedule: fixed
    numbers, or (``learned``) VDM's learned end points, parameters ``gamma_min`` and
    ``log(gamma_max - gamma_min)`` (so the order holds) trained with the model on its loss.
    Fixed end points hold no tensor, so a schedule's state is what it was without them."""

    def __init__(self, gamma_min: float, gamma_max: float, learned: bool = False):
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        self.fixed = (gamma_min, gamma_max - gamma_min)
        self.learned = (
            nn.Parameter(torch.tensor([gamma_min, math.log(gamma_max - gamma_min)]))
            if learned
            else None
        )

    def forward(self, like: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """``(gamma_min, gamma_max - gamma_min)``: numbers, or 0-d tensors of ``like``'s
        dtype that carry the gradient to the learned end points."""
        if self.learned is None:
            return self.fixed
        lo, log_width = self.learned.to(like.dtype)
        return lo, log_width.exp()

    def values(self) -> tuple[float, float]:
        """The current ``(gamma_min, gamma_max)``."""
        with torch.no_grad():
            lo, width = (float(v) for v in self(torch.zeros(0, dtype=torch.float64)))
        return lo, lo + width


class LogSNRLinearSchedule(VariancePreservingSchedule):
    """VDM's fixed schedule: ``gamma_t = gamma_min + (gamma_max - gamma_min) t``, linear in log-SNR.

    Every step of a uniform grid of ``T`` steps moves ``gamma`` by the same
    ``(gamma_max - gamma_min) / T``, so no step of the discrete bound jumps in SNR (the linear
    VP schedule puts a jump of 4.7 to 11.7 nats at its last step for ``T = 1000`` to 10).
    With ``learn_endpoints`` the two ends are trained (:class:`GammaEndpoints`).
    """

    def __init__(
        self, gamma_min: float = -13.3, gamma_max: float = 5.0, learn_endpoints: bool = False
    ):
        super().__init__()
        self.endpoints = GammaEndpoints(gamma_min, gamma_max, learn_endpoints)

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lo, slope = self.endpoints(t)
        return lo + slope * t, torch.zeros_like(t) + slope


class CosineSchedule(VariancePreservingSchedule):
    """Cosine schedule (Nichol & Dhariwal) in log-SNR form, truncated to ``[gamma_min, gamma_max]``.

    ``alpha = cos(pi u / 2)`` gives ``gamma = 2 log tan(pi u / 2)``; ``u`` runs linearly over
    ``[u_min, u_max]`` with ``gamma(u_min) = gamma_min`` and ``gamma(u_max) = gamma_max``.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        self.u_min = 2 / math.pi * math.atan(math.exp(gamma_min / 2))
        self.u_max = 2 / math.pi * math.atan(math.exp(gamma_max / 2))

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        du_dt = self.u_max - self.u_min
        angle = 0.5 * math.pi * (self.u_min + du_dt * t)
        gamma = 2 * torch.log(torch.tan(angle))
        # d/du 2 log tan(pi u / 2) = pi / (sin cos) = 2 pi / sin(2 angle)
        return gamma, 2 * math.pi / torch.sin(2 * angle) * du_dt


class FlowMatchingOTSchedule(Schedule):
    """Conditional OT path of flow matching, in this package's time direction.

    ``alpha_t = 1 - t``, ``sigma_t = sigma_min + (1 - sigma_min) t``. At ``t = 1``
    ``alpha = 0`` and ``gamma = +inf``: use an x-predicting network, or a grid ending
    below 1, when a formula divides by ``alpha``.
    """

    def __init__(self, sigma_min: float = 1e-4):
        super().__init__()
        if not 0 < sigma_min < 1:
            raise ValueError(f"need 0 < sigma_min < 1, got {sigma_min}")
        self.sigma_min = sigma_min

    def forward(self, t: Tensor) -> ScheduleValues:
        alpha, sigma = 1 - t, self.sigma_min + (1 - self.sigma_min) * t
        d_alpha, d_sigma = -torch.ones_like(t), torch.full_like(t, 1 - self.sigma_min)
        gamma = 2 * (torch.log(sigma) - torch.log(alpha))
        d_gamma = 2 * (d_sigma / sigma - d_alpha / alpha)
        return ScheduleValues(alpha, sigma, d_alpha, d_sigma, gamma, d_gamma)


class TableVPSchedule(VariancePreservingSchedule):
    """VP schedule through the ``alphas_cumprod`` table ``[N]`` of a discrete DDPM.

    Timestep ``k`` (``0..N-1``) sits at ``t = (k + 1) / N`` with
    ``gamma = log((1 - alphas_cumprod[k]) / alphas_cumprod[k])``; ``gamma`` is linear in ``t``
    between the points and extended linearly from the first segment down to ``t = 0``, so
    ``sigma_0 > 0``. On the grid ``t = k / N`` the steps are those of the discrete model.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        super().__init__()
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if table.dim() != 1 or table.numel() < 2:
            raise ValueError(
                f"alphas_cumprod must be 1-D with at least 2 entries, got {tuple(table.shape)}"
            )
        if not bool(((table > 0) & (table < 1)).all()) or not bool((table[1:] < table[:-1]).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1) and decrease strictly")
        self.register_buffer("gamma_table", torch.log1p(-table) - torch.log(table))

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        table = self.gamma_table
        n = table.numel()
        position = t.to(table.dtype) * n - 1
        k = position.floor().clamp(0, n - 2).long()
        slope = table[k + 1] - table[k]
        gamma = table[k] + slope * (position - k)
        return gamma.to(t.dtype), (slope * n).to(t.dtype)


class _PositiveLinear(nn.Linear):
    """Linear layer with weights ``softplus(w) >= 0``: monotone non-decreasing in its input."""

    def forward(self, x: Tensor) -> Tensor:
        return F_nn.linear(x, F_nn.softplus(self.weight), self.bias)


class LearnedVPSchedule(VariancePreservingSchedule):
    """VDM's learned monotone schedule with end points pinned by construction.

    ``gamma_t = gamma_min + (gamma_max - gamma_min) (h(t) - h(0)) / (h(1) - h(0))`` with
    ``h(t) = l1(t) + l3(sigmoid(l2(l1(t))))`` built from non-negative weights, so
    ``gamma_0 = gamma_min`` and ``gamma_1 = gamma_max`` whatever the parameters.
    ``gamma'`` is one forward-mode Jacobian-vector product in ``t``.
    """

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        hidden: int = 1024,
        learn_endpoints: bool = False,
    ):
        super().__init__()
        self.endpoints = GammaEndpoints(gamma_min, gamma_max, learn_endpoints)
        self.l1 = _PositiveLinear(1, 1)
        self.l2 = _PositiveLinear(1, hidden)
        self.l3 = _PositiveLinear(hidden, 1)
        with torch.no_grad():  # start close to a linear gamma, as VDM does
            self.l1.weight.fill_(math.log(math.expm1(1.0)))
            self.l1.bias.zero_()
            self.l3.weight.fill_(-10.0)

    def _h(self, t: Tensor) -> Tensor:
        u = self.l1(t[:, None])
        return (u + self.l3(torch.sigmoid(self.l2(u))))[:, 0]

    def _gamma(self, t: Tensor) -> Tensor:
        ends = self._h(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        fraction = (self._h(t) - ends[0]) / (ends[1] - ends[0])
        lo, width = self.endpoints(t)
        return lo + width * fraction

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # jvp cannot attach a tangent to a tensor with repeated memory (``t.expand(B)``).
        t = t.contiguous()
        return torch.func.jvp(self._gamma, (t,), (torch.ones_like(t),))


SCHEDULES: dict[str, type[Schedule]] = {
    "log_snr": LogSNRLinearSchedule,
    "linear": LinearVPSchedule,
    "cosine": CosineSchedule,
    "fm_ot": FlowMatchingOTSchedule,
    "learned": LearnedVPSchedule,
}


#: The schedules whose end points ``gamma_min``, ``gamma_max`` can be learned.
LEARNABLE_ENDPOINTS = ("log_snr", "learned")


def make_schedule(name: str, learn_endpoints: bool = False, **kwargs: float) -> Schedule:
    """Build a schedule by name (one of :data:`SCHEDULES`), with learned end points if asked
    (one of :data:`LEARNABLE_ENDPOINTS`)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if learn_endpoints:
        if name not in LEARNABLE_ENDPOINTS:
            raise ValueError(
                f"schedule {name!r} has fixed end points; learned ones need one of "
                f"{list(LEARNABLE_ENDPOINTS)}"
            )
        kwargs["learn_endpoints"] = True
    return SCHEDULES[name](**kwargs)
