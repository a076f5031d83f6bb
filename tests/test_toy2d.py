import math

import numpy as np
import pytest
import torch
from scipy import stats

from ndm.data.toy2d import (
    DATASETS,
    GAUSSIAN_COV,
    GAUSSIAN_MEAN,
    entropy,
    has_density,
    log_density,
    sample_toy2d,
    toy2d_splits,
)
from ndm.plots.points import grid_cells


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_float32_finite_and_reproducible(name):
    x = sample_toy2d(name, 1000, seed=3)
    assert x.shape == (1000, 2)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.std(dim=0).min() > 0.1
    assert torch.equal(x, sample_toy2d(name, 1000, seed=3))
    assert not torch.equal(x, sample_toy2d(name, 1000, seed=4))
    assert sample_toy2d(name, 0, seed=0).shape == (0, 2)
    g = torch.Generator().manual_seed(0)
    assert DATASETS[name](7, g).shape == (7, 2)


def test_checkerboard_support_and_square_frequencies():
    n = 16000
    x = sample_toy2d("checkerboard", n, seed=0)
    lp = log_density("checkerboard", x)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp, torch.full_like(lp, -math.log(32.0)))
    assert (x.abs() <= 4).all()

    cells = torch.floor(x.double() / 2).long() + 2  # in {0, 1, 2, 3}
    assert ((cells.sum(dim=1) % 2) == 0).all()  # (i + j) even with i, j offset by 2
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    filled = counts[counts > 0]
    assert len(filled) == 8
    expected = n / 8
    chi2 = float(((filled - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-6, df=7)


def test_checkerboard_log_density_outside_is_minus_inf():
    x = torch.tensor([[1.0, -1.0], [-3.0, -1.0], [5.0, 0.5], [0.5, 0.5], [-3.0, -3.0]])
    lp = log_density("checkerboard", x)
    assert torch.isneginf(lp[:3]).all()
    assert torch.allclose(lp[3:], torch.full((2,), -math.log(32.0)))


def test_checkerboard_entropy():
    assert entropy("checkerboard") == pytest.approx(math.log(32.0), abs=1e-12)
    assert entropy("checkerboard") == pytest.approx(3.4657, abs=1e-4)
    x = sample_toy2d("checkerboard", 2000, seed=1)
    assert -log_density("checkerboard", x).mean().item() == pytest.approx(math.log(32.0), abs=1e-6)


def test_gaussian_moments():
    n = 20000
    x = sample_toy2d("gaussian", n, seed=0).double()
    cov = GAUSSIAN_COV
    var = torch.diagonal(cov)
    mean_tol = 5 * torch.sqrt(var / n)
    assert ((x.mean(0) - GAUSSIAN_MEAN).abs() < mean_tol).all()
    emp_cov = torch.cov(x.T)
    cov_tol = 5 * torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    assert ((emp_cov - cov).abs() < cov_tol).all()


def test_gaussian_log_density_and_entropy():
    mvn = stats.multivariate_normal(GAUSSIAN_MEAN.numpy(), GAUSSIAN_COV.numpy())
    h = entropy("gaussian")
    assert h == pytest.approx(float(mvn.entropy()), abs=1e-12)

    x = sample_toy2d("gaussian", 20000, seed=2).double()
    lp = log_density("gaussian", x)
    assert lp.dtype == torch.float64
    np.testing.assert_allclose(lp.numpy(), mvn.logpdf(x.numpy()), rtol=1e-12, atol=1e-12)
    # std of -log p is 1 for a 2-D Gaussian (half a chi-square with 2 dof)
    assert -lp.mean().item() == pytest.approx(h, abs=5 / math.sqrt(len(x)))
    assert log_density("gaussian", x.float()).dtype == torch.float32


def test_entropy_and_density_unknown_for_other_datasets():
    for name in ("8gaussians", "moons", "pinwheel", "swissroll"):
        assert entropy(name) is None
        assert not has_density(name)
        with pytest.raises(NotImplementedError):
            log_density(name, torch.zeros(3, 2))
    assert has_density("checkerboard") and has_density("gaussian")


def test_eight_gaussians_centres():
    x = sample_toy2d("8gaussians", 8000, seed=0).double()
    r = x.norm(dim=1)
    assert r.mean().item() == pytest.approx(2 * math.sqrt(2), abs=0.05)
    angles = torch.atan2(x[:, 1], x[:, 0])
    k = torch.round(angles / (math.pi / 4)) % 8
    counts = torch.bincount(k.long(), minlength=8)
    assert counts.min() > 800 and counts.max() < 1200


def test_splits_differ_and_are_reproducible():
    tr, te = toy2d_splits("moons", 500, 300, seed=5)
    assert tr.shape == (500, 2) and te.shape == (300, 2)
    assert not torch.equal(tr[:300], te)
    tr2, te2 = toy2d_splits("moons", 500, 300, seed=5)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    tr3, _ = toy2d_splits("moons", 500, 300, seed=6)
    assert not torch.equal(tr, tr3)
    assert torch.equal(tr, sample_toy2d("moons", 500, seed=10))
    assert torch.equal(te, sample_toy2d("moons", 300, seed=11))


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="nosuchdata") as info:
        sample_toy2d("nosuchdata", 10, seed=0)
    assert "checkerboard" in str(info.value)
    for fn in (entropy, lambda s: log_density(s, torch.zeros(1, 2))):
        with pytest.raises(ValueError, match="nosuchdata"):
            fn("nosuchdata")


def test_transform_figure_colours_checkerboard_points_by_their_square() -> None:
    points = sample_toy2d("checkerboard", 4000, seed=0)
    cells = grid_cells(points)
    # the side-2 squares of [-4, 4]^2, numbered row by row from the lower left
    column, row = ((points + 4) / 2).floor().long().clamp(0, 3).unbind(1)
    assert torch.equal(cells, row * 4 + column)
    assert cells.unique().numel() == 8  # the filled squares only
