"""Small convolutional image classifier, used as an offline FID feature network."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 convolution -> GroupNorm -> SiLU; ``stride`` 2 halves the spatial size (rounding up)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.SiLU(),
    )


class SmallClassifier(nn.Module):
    """CNN classifier for ``[N, in_channels, resolution, resolution]`` images in ``[-1, 1]``.

    Three conv blocks (``width``, ``2 width``, ``2 width`` channels; the second and third halve
    the spatial size while it stays at least 4), global average pooling, a penultimate layer
    ``h = silu(W_f pool + b_f)`` of ``feature_dim`` units, then linear logits ``W_h h + b_h``.
    GroupNorm (no batch statistics) makes the outputs independent of train/eval mode and of
    the other images in a batch.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        resolution: int,
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.resolution = resolution
        self.feature_dim = feature_dim
        blocks, size = [_conv_block(in_channels, width, 1)], resolution
        for c_in in (width, 2 * width):
            halve = (size + 1) // 2 >= 4
            size = (size + 1) // 2 if halve else size
            blocks.append(_conv_block(c_in, 2 * width, 2 if halve else 1))
        self.conv = nn.Sequential(*blocks)
        self.feature = nn.Linear(2 * width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: ``x`` [N, C, H, W] -> ``h`` [N, feature_dim]."""
        expected = (self.in_channels, self.resolution, self.resolution)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape [N, {expected}], got {list(x.shape)}")
        pooled = self.conv(x).mean(dim=(2, 3))
        return F.silu(self.feature(pooled))

    def forward(self, x: Tensor) -> Tensor:
        """Logits: ``x`` [N, C, H, W] -> [N, num_classes]."""
        return self.head(self.features(x))


def train_classifier(
    images: Tensor,
    labels: Tensor,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    num_classes: int | None = None,
    to_input: Callable[[Tensor], Tensor] | None = None,
) -> SmallClassifier:
    """Fit a :class:`SmallClassifier` to ``images`` [N, C, H, W] in [-1, 1] and ``labels`` [N]
    (or to ``to_input(batch)`` of each minibatch of ``images``, e.g. levels mapped to
    [-1, 1] one batch at a time, for image sets larger than memory as floats).

    Minimises the mean cross-entropy ``-log softmax(f(x))_y`` with AdamW (weight decay 1e-4)
    for ``steps`` steps on minibatches drawn uniformly with replacement. The initialisation and
    the minibatches come from ``seed`` alone (the global RNG is left untouched), so equal
    arguments give identical weights. ``num_classes`` defaults to ``labels.max() + 1``.
    The returned network is in eval mode, on the device of ``images``.
    """
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square images [N, C, H, H], got {list(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"expected labels [{images.shape[0]}], got {list(labels.shape)}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallClassifier(images.shape[1], num_classes, images.shape[2])
    net = net.to(images.device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="FID feature classifier", unit="step", leave=False):
        idx = torch.randint(images.shape[0], (batch_size,), generator=gen).to(images.device)
        batch = images[idx] if to_input is None else to_input(images[idx])
        loss = F.cross_entropy(net(batch), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(
    classifier: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 512,
    to_input: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Fraction of ``images`` [N, C, H, W] (passed through ``to_input`` batch by batch when
    given, as in :func:`train_classifier`) whose arg-max logit equals ``labels`` [N]."""
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        logits = classifier(batch if to_input is None else to_input(batch))
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / images.shape[0]
