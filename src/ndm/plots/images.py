"""Figures of image models: sample grids, ``F_phi(x, t)`` across ``t`` (the paper's Figure
2b-c) and the predictions ``x_theta(z_1, 1)`` from pure noise (Figure 2d-e)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ndm.analysis.diagnostics import transform_displacement
from ndm.models.ndm import NDM
from ndm.plots.figures import save_figure

DPI = 100

TIMES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def image_grid(images: Tensor, columns: int, pad: int = 1) -> Tensor:
    """Tile ``images [N, C, H, W]`` in ``[-1, 1]`` into one ``[H', W', C]`` array in ``[0, 1]``,
    ``pad`` white pixels around every image (a blank cell fills an incomplete last row)."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    cells = torch.ones(rows * columns, c, h + 2 * pad, w + 2 * pad)
    cells[:n, :, pad : pad + h, pad : pad + w] = ((images.detach().float().cpu() + 1) / 2).clamp(
        0, 1
    )
    grid = cells.reshape(rows, columns, c, h + 2 * pad, w + 2 * pad).permute(0, 3, 1, 4, 2)
    return grid.reshape(rows * (h + 2 * pad), columns * (w + 2 * pad), c)


def _pixels(grid: Tensor) -> Tensor:
    return grid.squeeze(-1) if grid.shape[-1] == 1 else grid


def _show(
    grid: Tensor, path: str | Path, title: str, scale: tuple[float, float] | None = None
) -> None:
    """One grid in a figure of about 5 pixels per image pixel; ``scale`` adds a colour bar
    labelled from ``scale[0]`` (black) to ``scale[1]`` (white)."""
    fig = Figure(figsize=(max(4.0, grid.shape[1] / 20), max(3.0, grid.shape[0] / 20) + 0.5))
    ax = fig.subplots()
    shown = ax.imshow(_pixels(grid).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    if scale is not None:
        bar = fig.colorbar(shown, ax=ax, fraction=0.04, ticks=[0, 0.5, 1])
        low, high = scale
        bar.ax.set_yticklabels([f"{low:.2f}", f"{(low + high) / 2:.2f}", f"{high:.2f}"])
    save_figure(fig, path, DPI)


def plot_image_samples(
    samples: Tensor, data: Tensor, path: str | Path, columns: int = 8, caption: str = ""
) -> None:
    """Samples ``[N, C, H, W]`` (left) and as many data images (right), in ``[-1, 1]``, in two
    padded grids; ``caption`` (the sampler, its steps and NFE) titles the samples."""
    n = min(samples.shape[0], data.shape[0], columns * 8)
    grids = [image_grid(images[:n].cpu(), columns, pad=1) for images in (samples, data)]
    height, width = grids[0].shape[:2]
    fig = Figure(figsize=(max(8.0, 2 * width / 20), max(4.0, height / 20) + 0.6))
    titles = (f"samples ({n}{', ' + caption if caption else ''})", f"data ({n})")
    for ax, grid, title in zip(fig.subplots(1, 2), grids, titles, strict=True):
        ax.imshow(_pixels(grid).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    save_figure(fig, path, DPI)


@torch.no_grad()
def plot_image_transform(
    model: NDM, images: Tensor, path: str | Path, times: Sequence[float] = TIMES
) -> None:
    """``F_phi(x, t)`` of each of ``images [N, C, H, W]`` (one row each) at each of ``times``
    (one column each), all on one grey scale, shown by a colour bar; the title gives each
    time's ``E||F(x, t) - x||^2 / E||x||^2``."""
    param = next(model.parameters())
    x = images.to(param.device, param.dtype)
    columns = [
        model.process.data_transform(x, torch.full((x.shape[0],), t, dtype=x.dtype)).cpu()
        for t in times
    ]
    tiles = torch.stack(columns, 1).flatten(0, 1)
    low, high = float(tiles.min()), float(tiles.max())  # one scale for every tile
    scaled = 2 * (tiles - low) / max(high - low, 1e-8) - 1
    moved = transform_displacement(model, x, torch.tensor(times)).tolist()
    title = "F(x, t), one row per image; t (moved) = " + ", ".join(
        f"{t:g} ({r:.2g})" for t, r in zip(times, moved, strict=True)
    )
    _show(image_grid(scaled, len(times), pad=1), path, title, scale=(low, high))


@torch.no_grad()
def plot_predictions_from_noise(
    models: dict[str, NDM],
    shape: Sequence[int],
    path: str | Path,
    n: int = 16,
    seed: int = 0,
    columns: int = 8,
) -> None:
    """``x_theta(z_1, 1)`` for the same ``n`` draws ``z_1 ~ N(0, I)`` under each model, one
    block of rows per model (NDM above DDPM shows what the transform changes)."""
    rows = []
    for model in models.values():
        param = next(model.parameters())
        z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
        z = z.to(param.device, param.dtype)
        rows.append(model.predictor(z, torch.ones(n, dtype=z.dtype, device=z.device)).cpu())
    title = "x_theta(z_1, 1), the same z_1 in each block: " + " / ".join(models)
    _show(image_grid(torch.cat(rows), columns, pad=1), path, title)
