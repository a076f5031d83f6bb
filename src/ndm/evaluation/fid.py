"""Frechet distance (FID) between image sets in the feature space of a fixed network.

For features ``phi(x)`` in ``R^d`` with sample means ``mu_r, mu_f`` and unbiased sample
covariances ``S_r, S_f`` over the real and generated sets,

    FID = ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^{1/2}),

the Frechet (2-Wasserstein) distance between the Gaussians fitted to the two feature sets.
The statistics are accumulated and the distance evaluated by torchmetrics'
:class:`~torchmetrics.image.fid.FrechetInceptionDistance` (float64 sums, ``tr (S_r S_f)^{1/2}``
from the eigenvalues of ``S_r S_f``). Images live in the model space ``[-1, 1]``, shape
``[N, C, H, W]``; every feature network here takes them in that form.

Feature networks: :class:`ClassifierFeatures` (penultimate layer of a
:class:`~ndm.nets.classifier.SmallClassifier`, fully offline) and :func:`inception_features`
(Inception-v3 with the standard FID weights from a local file; needs ``torch-fidelity``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ndm.nets.classifier import SmallClassifier

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


class ClassifierFeatures(nn.Module):
    """``x`` [N, C, H, W] in [-1, 1] -> penultimate activations [N, feature_dim].

    Wraps a trained :class:`SmallClassifier`, stays in eval mode, and exposes ``num_features``
    so torchmetrics needs no dummy forward pass to size its statistics.
    """

    def __init__(self, classifier: SmallClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.feature_dim
        self.eval()

    def train(self, mode: bool = True) -> ClassifierFeatures:
        """Keep eval mode whatever ``mode`` is asked for."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


class InceptionFeatures(nn.Module):
    """``x`` [N, 1 or 3, H, W] in [-1, 1] -> Inception-v3 pool features [N, 2048].

    Images are quantised as the network expects, ``round((clamp(x, -1, 1) + 1) * 127.5)`` in
    uint8 ``0..255``, and grey-scale images are repeated to 3 channels; ``inception`` (the
    torchmetrics/torch-fidelity Inception-v3) resizes them to 299 x 299 and maps
    ``(p - 128) / 128`` through the network.
    """

    num_features = 2048

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"Inception-v3 needs 1 or 3 channels, got {x.shape[1]}")
        pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return self.inception(pixels)


def inception_features(weights_path: str | Path) -> InceptionFeatures:
    """Inception-v3 FID features from the local weights file ``weights_path``.

    Uses torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's ``FeatureExtractorInceptionV3``
    kept in eval mode) with the 2048-d pool layer and the TensorFlow-1-compatible bilinear
    resize of the reference FID implementation. Nothing is downloaded.

    Raises:
        FileNotFoundError: ``weights_path`` is not a file.
        ImportError: ``torch-fidelity`` is not installed.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID with Inception-v3 needs the standard FID weights file {FID_WEIGHTS_NAME}; "
            f"pass its path with --fid-weights; nothing is downloaded (no file at {path})"
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "FID with Inception-v3 needs the optional package torch-fidelity: "
            "pip install torch-fidelity"
        ) from err
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048"],
        feature_extractor_weights_path=str(path),
        antialias=False,
    )
    return InceptionFeatures(net)


class _Float64Features(nn.Module):
    """``features`` with float64 output [N, d] and a ``num_features`` attribute.

    torchmetrics casts features to float64 before accumulating but returns the distance in the
    features' dtype; float64 output keeps the result in double precision too.
    """

    def __init__(self, features: nn.Module, num_features: int) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).to(torch.float64)


def _placement(module: nn.Module, images: Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of ``module``'s first parameter (else those of ``images``)."""
    param = next(module.parameters(), None)
    if param is None or not param.is_floating_point():
        return images.device, images.dtype
    return param.device, param.dtype


def frechet_distance(
    real: Tensor, fake: Tensor, features: nn.Module, batch_size: int = 128
) -> float:
    """FID between ``real`` [N_r, C, H, W] and ``fake`` [N_f, C, H, W] images in [-1, 1].

    ``features`` maps image batches [B, C, H, W] to [B, d]; its ``num_features`` attribute
    gives ``d`` when present, otherwise one forward pass on two real images does. Images are
    fed in batches of ``batch_size``, moved to the device and floating dtype of ``features``.
    Returns ``||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^{1/2})`` in float64 (see the
    module docstring); identical sets give 0 up to rounding.
    """
    if real.ndim != 4 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f"expected [N, C, H, W] sets of equal image shape, got "
            f"{list(real.shape)} and {list(fake.shape)}"
        )
    if min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError("each image set needs at least 2 images for a covariance")
    device, dtype = _placement(features, real)
    num_features = getattr(features, "num_features", None)
    if not isinstance(num_features, int):
        with torch.no_grad():
            num_features = features(real[:2].to(device=device, dtype=dtype)).shape[-1]
    metric = FrechetInceptionDistance(
        feature=_Float64Features(features, num_features), normalize=True
    ).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device=device, dtype=dtype)
            metric.update(batch, real=is_real)
    return float(metric.compute())
