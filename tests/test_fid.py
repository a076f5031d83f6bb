import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from ndm.evaluation.fid import (
    FID_WEIGHTS_NAME,
    ClassifierFeatures,
    InceptionFeatures,
    frechet_distance,
    inception_features,
)
from ndm.nets.classifier import SmallClassifier, accuracy, train_classifier


def _projection(in_dim: int, out_dim: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, out_dim))


def _reference_fid(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy, unbiased covariances."""
    mu1, mu2 = f_real.mean(0), f_fake.mean(0)
    s1, s2 = np.cov(f_real, rowvar=False), np.cov(f_fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _np_features(net: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    lin = net[1]
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    return x.reshape(x.shape[0], -1).double().numpy() @ w.T + b


def test_matches_scipy_reference_across_batches():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(500, 1, 4, 4, generator=g) * 2 - 1
    fake = (torch.rand(450, 1, 4, 4, generator=g) * 1.6 - 0.6) ** 3
    net = _projection(16, 12)
    ref = _reference_fid(_np_features(net, real), _np_features(net, fake))
    got = frechet_distance(real, fake, net, batch_size=128)
    assert ref > 0.1
    assert got == pytest.approx(ref, rel=1e-4)
    # the batch size only changes how the sums are accumulated
    assert frechet_distance(real, fake, net, batch_size=37) == pytest.approx(got, rel=1e-9)


def test_identical_sets_give_zero():
    real = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert abs(frechet_distance(real, real.clone(), _projection(16, 10))) < 1e-6


@pytest.mark.parametrize("shift_norm", [0.5, 1.0, 2.0])
def test_mean_shift_closed_form(shift_norm: float):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 1, 2, 4, generator=g, dtype=torch.float64)
    direction = torch.randn(1, 1, 2, 4, generator=g, dtype=torch.float64)
    shift = shift_norm * direction / direction.norm()
    flat = nn.Flatten()
    # same samples shifted: equal covariances, so FID = ||d||^2 exactly
    assert frechet_distance(x, x + shift, flat) == pytest.approx(shift_norm**2, rel=1e-9)
    # independent samples of N(0, I) and N(d, I): ||d||^2 up to sampling error, dominated by
    # the cross term 2 d.(mean errors), of standard deviation 2 ||d|| sqrt(2 / n)
    y = torch.randn(4000, 1, 2, 4, generator=g, dtype=torch.float64) + shift
    tol = 0.03 + 3 * 2 * shift_norm * (2 / 4000) ** 0.5
    assert frechet_distance(x, y, flat) == pytest.approx(shift_norm**2, abs=tol)


def test_covariance_scale_closed_form():
    # fake = s * real: equal means, S_f = s^2 S_r, so FID = (1 - s)^2 tr(S_r)
    x = torch.randn(1000, 1, 2, 4, generator=torch.Generator().manual_seed(4))
    x = x.double() - x.double().mean(0)
    trace = float(x.reshape(1000, -1).var(0).sum())
    assert frechet_distance(x, 0.5 * x, nn.Flatten()) == pytest.approx(0.25 * trace, rel=1e-9)


def _stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: horizontal stripes, class 1: vertical, random phase, noise; [n, 1, 8, 8]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    phase = torch.randint(2, (n, 1, 1), generator=g)
    rows = (torch.arange(8)[None, :, None] + phase) % 2 * 2.0 - 1.0
    img = rows.expand(n, 8, 8).clone()
    img[labels == 1] = img[labels == 1].transpose(1, 2)
    img = img + 0.5 * torch.randn(n, 8, 8, generator=g)
    return img.clamp(-1, 1)[:, None], labels


def test_classifier_learns_stripes_and_is_deterministic():
    x, y = _stripes(512, seed=5)
    x_test, y_test = _stripes(256, seed=6)
    kw = dict(steps=30, batch_size=64, lr=3e-3, seed=7)
    rng_before = torch.get_rng_state()
    clf = train_classifier(x, y, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert accuracy(clf, x_test, y_test) > 0.95
    again = train_classifier(x, y, **kw)
    for a, b in zip(clf.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = train_classifier(x, y, **{**kw, "seed": 8})
    assert not torch.equal(clf.head.weight, other.head.weight)


def test_classifier_features_for_fid():
    x, y = _stripes(256, seed=9)
    clf = SmallClassifier(1, 2, 8, feature_dim=16)
    feats = ClassifierFeatures(clf).train()
    assert not feats.training and feats.num_features == 16
    assert torch.equal(feats(x), clf.features(x))
    fid_same_class = frechet_distance(x[y == 0][:60], x[y == 0][60:], feats)
    fid_other_class = frechet_distance(x[y == 0][:60], x[y == 1], feats)
    assert 0 < fid_same_class < fid_other_class
    with pytest.raises(ValueError, match="expected images"):
        clf.features(torch.zeros(2, 1, 16, 16))


def test_missing_inception_weights_names_path_and_flag(tmp_path):
    missing = tmp_path / FID_WEIGHTS_NAME
    with pytest.raises(FileNotFoundError) as err:
        inception_features(missing)
    message = str(err.value)
    assert str(missing) in message and "--fid-weights" in message
    assert FID_WEIGHTS_NAME in message and "nothing is downloaded" in message


def test_inception_needs_torch_fidelity(tmp_path, monkeypatch):
    weights = tmp_path / FID_WEIGHTS_NAME
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        inception_features(weights)


class _RecordInput(nn.Module):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.pixels = pixels
        return pixels.float().mean(dim=(2, 3))


def test_inception_input_quantisation():
    record = _RecordInput()
    x = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0]).reshape(1, 1, 2, 3)
    InceptionFeatures(record)(x)
    assert record.pixels.dtype == torch.uint8 and record.pixels.shape == (1, 3, 2, 3)
    expected = torch.tensor([0, 64, 128, 191, 255, 255], dtype=torch.uint8).reshape(2, 3)
    for channel in record.pixels[0]:
        assert torch.equal(channel, expected)
