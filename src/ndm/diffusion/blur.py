"""Time-dependent blurring ``F(x, t)``: the fixed transform of soft / blurring diffusion.

Blurring is heat dissipation, diagonal in the orthonormal DCT-II basis ``V`` (reflecting
boundaries): with frequencies ``lambda_uv = pi^2 (u^2 / H^2 + v^2 / W^2)``,

    F(x, t) = V^T diag(d_t) V x,    d_t = (1 - d_min) exp(-lambda tau_t) + d_min,
    tau_t = sigma_t^2 / 2,          sigma_t = sigma_max sin^2(pi t / 2),

a Gaussian blur of ``sigma_t`` pixels that keeps a fraction ``d_min`` of every frequency so
``F(., t)`` stays invertible. ``sigma_0 = 0`` gives ``F(x, 0) = x``; the mean colour
(``lambda_00 = 0``) is never changed. ``dF/dt = V^T diag(dd_t/dt) V x`` is exact, with
``dd_t/dt = -(1 - d_min) lambda tau'_t exp(-lambda tau_t)`` and
``tau'_t = sigma_t sigma_max (pi / 2) sin(pi t)``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ndm.diffusion.transforms import Transform


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``[n, n]`` in float64: ``(V x)_k = sum_i V_ki x_i`` as ``scipy.fft.dct(x, norm="ortho")``.

    ``V_ki = sqrt(2 / n) c_k cos(pi k (2 i + 1) / (2 n))``, ``c_0 = 1 / sqrt(2)``, else 1.
    """
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    v = math.sqrt(2.0 / n) * torch.cos(math.pi * k * (2 * i + 1) / (2 * n))
    v[0] /= math.sqrt(2.0)
    return v


@functools.lru_cache(maxsize=16)
def _basis(
    height: int, width: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """DCT matrices ``[H, H]``, ``[W, W]`` and frequencies ``lambda [H, W]``, built in
    float64 and cast once per dtype and device."""
    u = torch.arange(height, dtype=torch.float64)[:, None] / height
    v = torch.arange(width, dtype=torch.float64)[None, :] / width
    lam = math.pi**2 * (u**2 + v**2)
    return tuple(
        m.to(dtype=dtype, device=device) for m in (dct_matrix(height), dct_matrix(width), lam)
    )


class BlurTransform(Transform):
    """Blur images ``x [B, C, H, W]`` by ``sigma_t`` pixels (see the module docstring).

    ``sigma_max`` defaults to ``0.625 max(H, W)`` (20 pixels on 32x32 images), which
    leaves little more than the mean colour at ``t = 1``.
    """

    def __init__(
        self, height: int, width: int, sigma_max: float | None = None, min_scale: float = 1e-3
    ) -> None:
        super().__init__()
        if not 0.0 <= min_scale < 1.0:
            raise ValueError(f"min_scale must be in [0, 1), got {min_scale}")
        self.sigma_max = 0.625 * max(height, width) if sigma_max is None else float(sigma_max)
        self.min_scale = min_scale
        self.height, self.width = height, width

    def _to_dct(self, x: Tensor) -> Tensor:
        dct_h, dct_w, _ = _basis(self.height, self.width, x.dtype, x.device)
        return dct_h @ x @ dct_w.T

    def _from_dct(self, y: Tensor) -> Tensor:
        dct_h, dct_w, _ = _basis(self.height, self.width, y.dtype, y.device)
        return dct_h.T @ y @ dct_w

    def _scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(d_t, dd_t/dt)``, each ``[B, 1, H, W]``, in ``like``'s dtype and device."""
        t = t.to(like.dtype)[:, None, None, None]
        lam = _basis(self.height, self.width, like.dtype, like.device)[2]
        sigma = self.sigma_max * torch.sin(0.5 * math.pi * t) ** 2
        dtau = sigma * self.sigma_max * 0.5 * math.pi * torch.sin(math.pi * t)
        decay = (1.0 - self.min_scale) * torch.exp(-lam * 0.5 * sigma**2)
        return decay + self.min_scale, -lam * dtau * decay

    def value(self, x: Tensor, t: Tensor) -> Tensor:
        scale, _ = self._scales(t, x)
        return self._from_dct(scale * self._to_dct(x))

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        coefficients = self._to_dct(x)
        scale, dscale = self._scales(t, x)
        return self._from_dct(scale * coefficients), self._from_dct(dscale * coefficients)
