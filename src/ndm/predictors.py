"""The reverse-process network ``x_theta(z_t, t)``: any ``nn.Module`` mapping ``(z [B, ...], t [B])``
to a tensor of the same shape, read as a noise or a data prediction.

- ``"eps"`` (the paper's choice): ``x_hat = (z - sigma_t eps_hat) / alpha_t``.
- ``"x"``: ``x_hat = c_skip z + c_out NN(z, t)`` with ``c_skip = alpha / (alpha^2 + sigma^2)`` and
  ``c_out = sigma / sqrt(alpha^2 + sigma^2)`` (unit-variance data gives a unit-variance target).

Either is a valid parameterisation of ``x_hat`` for any transform ``F``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ndm.schedules import Schedule
from ndm.transforms import _per_example

PARAMETERISATIONS = ("eps", "x")


class Predictor(nn.Module):
    """``x_hat = x_theta(z, t)`` built from a network and a schedule."""

    def __init__(self, net: nn.Module, schedule: Schedule, output: str = "eps"):
        super().__init__()
        if output not in PARAMETERISATIONS:
            raise ValueError(
                f"unknown predictor output {output!r}; choose one of {PARAMETERISATIONS}"
            )
        self.net, self.schedule, self.output = net, schedule, output

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``x_hat`` of shape ``z.shape`` for ``z [B, ...]`` and ``t [B]``."""
        sched = self.schedule(t)
        alpha, sigma = _per_example(sched.alpha, z), _per_example(sched.sigma, z)
        out = self.net(z, t)
        if self.output == "eps":
            return (z - sigma * out) / alpha
        norm2 = alpha**2 + sigma**2
        return alpha / norm2 * z + sigma / norm2.sqrt() * out
