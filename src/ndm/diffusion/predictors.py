"""The reverse-process network ``x_theta(z_t, t)``: any ``nn.Module`` mapping ``(z [B, ...], t [B])``
to a tensor of the same shape, read as a noise or a data prediction.

- ``"eps"`` (the paper's choice): ``x_hat = (z - sigma_t eps_hat) / alpha_t``.
- ``"x"``: ``x_hat = c_skip z + c_out NN(z, t)`` with ``c_skip = alpha / (alpha^2 + sigma^2)`` and
  ``c_out = sigma / sqrt(alpha^2 + sigma^2)`` (unit-variance data gives a unit-variance target).

Either is a valid parameterisation of ``x_hat`` for any transform ``F``.

A predictor may also predict the per-dimension variance ``v_hat = Var_theta[x | z_t]`` (as
improved DDPM learns its variance): the network then has twice the channels, the second half
``h`` giving ``v_hat = exp(h) sigma_t^2 / (alpha_t^2 + sigma_t^2)`` (the posterior variance of
unit-variance Gaussian data at ``h = 0``). Discrete-time steps use it as their reverse variance
(:meth:`ndm.diffusion.process.NeuralDiffusion.reverse_variance`). Any predictor with a
``predict(z, t) -> Prediction`` method does; :func:`predict` asks any predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ndm.diffusion.schedules import Schedule
from ndm.diffusion.transforms import per_example

PARAMETERISATIONS = ("eps", "x")


@dataclass(frozen=True)
class Prediction:
    """``mean = x_hat [B, ...]`` and, if predicted, ``variance = Var_theta[x | z_t] [B, ...]``."""

    mean: Tensor
    variance: Tensor | None = None


class Predictor(nn.Module):
    """``x_hat = x_theta(z, t)`` (and ``Var_theta[x | z_t]`` if ``variance``) from a network
    and a schedule. With ``variance`` the network outputs ``2 C`` channels for ``C`` of ``z``."""

    def __init__(
        self, net: nn.Module, schedule: Schedule, output: str = "eps", variance: bool = False
    ):
        super().__init__()
        if output not in PARAMETERISATIONS:
            raise ValueError(
                f"unknown predictor output {output!r}; choose one of {PARAMETERISATIONS}"
            )
        if output == "eps":
            with torch.no_grad():
                end = schedule(torch.ones(1))
            if float(end.alpha) == 0.0:
                raise ValueError(
                    f"an eps predictor divides by alpha_t, and {type(schedule).__name__} has "
                    "alpha_1 = 0: use output 'x'"
                )
        self.net, self.schedule, self.output, self.variance = net, schedule, output, variance

    def predict(self, z: Tensor, t: Tensor) -> Prediction:
        """``x_hat`` and (if ``variance``) ``Var_theta[x | z_t]``, each of shape ``z.shape``,
        for ``z [B, ...]`` and ``t [B]``."""
        sched = self.schedule(t)
        alpha, sigma = per_example(sched.alpha, z), per_example(sched.sigma, z)
        out = self.net(z, t)
        log_scale = None
        if self.variance:
            if out.shape[1] != 2 * z.shape[1]:
                raise ValueError(
                    f"a predictor of the variance needs {2 * z.shape[1]} output channels, "
                    f"the network gave {out.shape[1]}"
                )
            out, log_scale = out.chunk(2, dim=1)
        norm2 = alpha**2 + sigma**2
        if self.output == "eps":
            mean = (z - sigma * out) / alpha
        else:
            mean = alpha / norm2 * z + sigma / norm2.sqrt() * out
        variance = None if log_scale is None else log_scale.float().exp() * sigma**2 / norm2
        return Prediction(mean, variance)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``x_hat`` of shape ``z.shape`` for ``z [B, ...]`` and ``t [B]``."""
        return self.predict(z, t).mean


def predict(predictor: nn.Module, z: Tensor, t: Tensor) -> Prediction:
    """The prediction of any predictor: ``predictor.predict(z, t)`` where it has that method,
    else the mean ``predictor(z, t)`` alone."""
    method = getattr(predictor, "predict", None)
    return method(z, t) if callable(method) else Prediction(predictor(z, t))
