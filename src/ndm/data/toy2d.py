"""2-D toy distributions.

Every sampler has the signature ``sampler(n, generator) -> Tensor[n, 2]`` (float32) and
draws all of its randomness from ``generator`` (a CPU ``torch.Generator``), so samples
are reproducible from a seed.

Datasets (registered in :data:`DATASETS`):

* ``checkerboard``: uniform on 8 of the 16 side-2 squares tiling ``[-4, 4]^2``; the square
  with lower-left corner ``(2i, 2j)``, ``i, j in {-2, -1, 0, 1}``, is filled iff ``i + j``
  is even. Density ``1/32`` on the filled area, entropy ``log 32``.
* ``8gaussians``: equal mixture of 8 isotropic Gaussians with centres on the circle of
  radius ``2 * sqrt(2)`` at angles ``k * pi / 4`` and standard deviation
  ``0.5 / sqrt(2)`` (the FFJORD definition: radius 4, std 0.5, everything divided by
  ``sqrt(2)``).
* ``moons``: two interleaving half circles (radius 1) with Gaussian noise of std 0.1,
  centred and scaled by 2.
* ``pinwheel``: 5 spiral arms (radial std 0.3, tangential std 0.1, rate 0.25), scaled by 2.
* ``swissroll``: the ``(x, z)`` plane of a 3-D swiss roll with unit Gaussian noise,
  divided by 5.
* ``gaussian``: fixed correlated Gaussian ``N(GAUSSIAN_MEAN, GAUSSIAN_COV)``.

``checkerboard`` and ``gaussian`` have closed-form densities: see :func:`log_density`
and :func:`entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Sampler = Callable[[int, torch.Generator], Tensor]

_F64 = torch.float64

#: Mean of the ``gaussian`` dataset, shape [2], float64.
GAUSSIAN_MEAN: Tensor = torch.tensor([1.0, -0.5], dtype=_F64)
#: Covariance of the ``gaussian`` dataset, shape [2, 2], float64.
GAUSSIAN_COV: Tensor = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=_F64)

#: Lower-left corners of the 8 filled checkerboard squares, shape [8, 2], float64.
CHECKERBOARD_CORNERS: Tensor = torch.tensor(
    [[2.0 * i, 2.0 * j] for i in (-2, -1, 0, 1) for j in (-2, -1, 0, 1) if (i + j) % 2 == 0],
    dtype=_F64,
)
CHECKERBOARD_SIDE = 2.0
CHECKERBOARD_LOG_DENSITY = -math.log(32.0)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 filled squares. Returns [n, 2]."""
    idx = torch.randint(0, len(CHECKERBOARD_CORNERS), (n,), generator=g)
    u = torch.rand(n, 2, generator=g, dtype=_F64)
    return CHECKERBOARD_CORNERS[idx] + CHECKERBOARD_SIDE * u


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """Mixture of 8 Gaussians on a circle of radius 2*sqrt(2), std 0.5/sqrt(2). [n, 2]."""
    angles = torch.arange(8, dtype=_F64) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    idx = torch.randint(0, 8, (n,), generator=g)
    noise = 0.5 * torch.randn(n, 2, generator=g, dtype=_F64)
    return (centres[idx] + noise) / math.sqrt(2.0)


def _moons(n: int, g: torch.Generator, noise: float = 0.1) -> Tensor:
    """Two interleaving half circles with Gaussian noise, centred and scaled by 2. [n, 2]."""
    upper = torch.rand(n, generator=g) < 0.5
    theta = math.pi * torch.rand(n, generator=g, dtype=_F64)
    x_up = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    x_low = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(upper[:, None], x_up, x_low)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=_F64)
    centre = torch.tensor([0.5, 0.25], dtype=_F64)
    return 2.0 * (x - centre)


def _pinwheel(n: int, g: torch.Generator) -> Tensor:
    """Five spiral arms (FFJORD pinwheel). [n, 2]."""
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    labels = torch.randint(0, num_classes, (n,), generator=g)
    feats = torch.randn(n, 2, generator=g, dtype=_F64)
    feats = feats * torch.tensor([radial_std, tangential_std], dtype=_F64)
    feats[:, 0] += 1.0
    base = labels.to(_F64) * (2 * math.pi / num_classes)
    angles = base + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], dim=1), torch.stack([s, c], dim=1)], dim=1)
    return 2.0 * torch.einsum("nij,nj->ni", rot, feats)


def _swissroll(n: int, g: torch.Generator, noise: float = 1.0) -> Tensor:
    """(x, z) plane of a noisy 3-D swiss roll, divided by 5. [n, 2]."""
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=g, dtype=_F64))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=_F64)
    return x / 5.0


def _gaussian(n: int, g: torch.Generator) -> Tensor:
    """N(GAUSSIAN_MEAN, GAUSSIAN_COV). [n, 2]."""
    chol = torch.linalg.cholesky(GAUSSIAN_COV)
    z = torch.randn(n, 2, generator=g, dtype=_F64)
    return GAUSSIAN_MEAN + z @ chol.T


def _as_float32(sampler: Callable[[int, torch.Generator], Tensor]) -> Sampler:
    def wrapped(n: int, generator: torch.Generator) -> Tensor:
        return sampler(n, generator).to(torch.float32)

    wrapped.__name__ = sampler.__name__
    wrapped.__doc__ = sampler.__doc__
    return wrapped


#: Registry ``name -> sampler(n, generator) -> Tensor[n, 2]`` (float32).
DATASETS: dict[str, Sampler] = {
    "checkerboard": _as_float32(_checkerboard),
    "8gaussians": _as_float32(_eight_gaussians),
    "moons": _as_float32(_moons),
    "pinwheel": _as_float32(_pinwheel),
    "swissroll": _as_float32(_swissroll),
    "gaussian": _as_float32(_gaussian),
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; known datasets: {sorted(DATASETS)}")


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def sample_toy2d(name: str, n: int, seed: int) -> Tensor:
    """Draw ``n`` samples of dataset ``name`` with a generator seeded by ``seed``.

    Returns a float32 tensor of shape [n, 2]. Raises ``ValueError`` for unknown names.
    """
    _check_name(name)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return DATASETS[name](n, _generator(seed))


def toy2d_splits(name: str, n_train: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train [n_train, 2] and test [n_test, 2] sets from the independent seeds
    ``2 * seed`` and ``2 * seed + 1``."""
    return sample_toy2d(name, n_train, 2 * seed), sample_toy2d(name, n_test, 2 * seed + 1)


def _checkerboard_log_density(x: Tensor) -> Tensor:
    # Closed squares: neighbouring filled squares share only corners, a null set.
    lo = CHECKERBOARD_CORNERS.to(x)
    hi = lo + CHECKERBOARD_SIDE
    inside = ((x[:, None, :] >= lo) & (x[:, None, :] <= hi)).all(dim=-1).any(dim=-1)
    out = torch.full(x.shape[:1], -math.inf, dtype=x.dtype, device=x.device)
    return out.masked_fill(inside, CHECKERBOARD_LOG_DENSITY)


def _gaussian_log_density(x: Tensor) -> Tensor:
    mean = GAUSSIAN_MEAN.to(x.device)
    cov = GAUSSIAN_COV.to(x.device)
    diff = x.to(_F64) - mean
    maha = (diff * torch.linalg.solve(cov, diff.T).T).sum(dim=-1)
    logdet = torch.logdet(cov)
    return (-0.5 * (maha + logdet + 2.0 * math.log(2.0 * math.pi))).to(x.dtype)


_LOG_DENSITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "checkerboard": _checkerboard_log_density,
    "gaussian": _gaussian_log_density,
}


def has_density(name: str) -> bool:
    """Whether ``name`` has a closed-form density (and entropy)."""
    _check_name(name)
    return name in _LOG_DENSITIES


def log_density(name: str, x: Tensor) -> Tensor:
    """Exact log-density of dataset ``name`` at ``x`` [N, 2]; returns [N] in ``x.dtype``.

    Available for ``checkerboard`` (``-log 32`` inside filled squares, ``-inf`` outside)
    and ``gaussian``. Raises ``ValueError`` for unknown names and ``NotImplementedError``
    for datasets without a closed-form density.
    """
    _check_name(name)
    if name not in _LOG_DENSITIES:
        raise NotImplementedError(
            f"dataset {name!r} has no closed-form density; available: {sorted(_LOG_DENSITIES)}"
        )
    if x.ndim != 2 or x.shape[-1] != 2:
        raise ValueError(f"expected x of shape [N, 2], got {tuple(x.shape)}")
    return _LOG_DENSITIES[name](x)


def entropy(name: str) -> float | None:
    """Differential entropy in nats of dataset ``name``, or ``None`` if not known in
    closed form."""
    _check_name(name)
    if name == "checkerboard":
        return math.log(32.0)
    if name == "gaussian":
        return 0.5 * float(torch.logdet(2.0 * math.pi * math.e * GAUSSIAN_COV))
    return None
