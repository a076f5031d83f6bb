"""Figures of image models: sample grids, ``F_phi(x, t)`` across ``t`` (the paper's Figure
2b-c) and the predictions ``x_theta(z_1, 1)`` from pure noise (Figure 2d-e)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ndm.model import NDM

TIMES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def image_grid(images: Tensor, columns: int) -> Tensor:
    """Tile ``images [N, C, H, W]`` in ``[-1, 1]`` into one ``[rows H, columns W, C]`` array in
    ``[0, 1]`` (a blank cell fills an incomplete last row)."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    padded = torch.ones(rows * columns, c, h, w)
    padded[:n] = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    grid = padded.reshape(rows, columns, c, h, w).permute(0, 3, 1, 4, 2)
    return grid.reshape(rows * h, columns * w, c)


def _show(grid: Tensor, path: str | Path, title: str) -> None:
    fig = Figure(figsize=(max(3.0, grid.shape[1] / 28), max(3.0, grid.shape[0] / 28) + 0.4))
    ax = fig.subplots()
    pixels = grid.squeeze(-1) if grid.shape[-1] == 1 else grid
    ax.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_image_samples(samples: Tensor, data: Tensor, path: str | Path, columns: int = 8) -> None:
    """Samples ``[N, C, H, W]`` above as many data images, in ``[-1, 1]``."""
    n = min(samples.shape[0], data.shape[0], columns * 8)
    both = torch.cat([samples[:n].cpu(), data[:n].cpu()])
    _show(image_grid(both, columns), path, f"samples (top {n}) and data (bottom {n})")


@torch.no_grad()
def plot_image_transform(
    model: NDM, images: Tensor, path: str | Path, times: Sequence[float] = TIMES
) -> None:
    """``F_phi(x, t)`` of each of ``images [N, C, H, W]`` (one row each) at each of ``times``
    (one column each), every image scaled to its own range for display."""
    param = next(model.parameters())
    x = images.to(param.device, param.dtype)
    columns = []
    for t in times:
        value = model.process.transform.value(x, torch.full((x.shape[0],), t, dtype=x.dtype))
        low = value.flatten(1).amin(1).reshape(-1, 1, 1, 1)
        high = value.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        columns.append(2 * (value - low) / (high - low).clamp_min(1e-8) - 1)
    tiles = torch.stack(columns, 1).flatten(0, 1)
    title = "F(x, t), t = " + ", ".join(f"{t:g}" for t in times)
    _show(image_grid(tiles, len(times)), path, title)


@torch.no_grad()
def plot_predictions_from_noise(
    models: dict[str, NDM], shape: Sequence[int], path: str | Path, n: int = 16, seed: int = 0
) -> None:
    """``x_theta(z_1, 1)`` for the same ``n`` draws ``z_1 ~ N(0, I)`` under each model, one
    row per model (NDM beside DDPM shows what the transform changes)."""
    rows = []
    for model in models.values():
        param = next(model.parameters())
        z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
        z = z.to(param.device, param.dtype)
        rows.append(model.predictor(z, torch.ones(n, dtype=z.dtype, device=z.device)).cpu())
    _show(image_grid(torch.cat(rows), n), path, "x_theta(z_1, 1): " + " / ".join(models))
