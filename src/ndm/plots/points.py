"""Figures of 2-D runs, drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ndm.analysis.diagnostics import transform_displacement
from ndm.diffusion.flow import FlowDiffusion
from ndm.models.ndm import NDM
from ndm.plots.figures import save_figure

DPI = 120

POINT = {"s": 1.0, "alpha": 0.5, "linewidths": 0}


def _limits(*points: Tensor, margin: float = 0.1) -> tuple[float, float]:
    """One square range covering the 0.5-99.5 percentiles of all ``points`` [N, 2]."""
    flat = torch.cat([p.detach().float().cpu().reshape(-1) for p in points])
    low, high = torch.quantile(flat, torch.tensor([0.005, 0.995])).tolist()
    pad = margin * (high - low) + 1e-3
    return low - pad, high + pad


def _style(ax: Axes, title: str, limits: tuple[float, float]) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.2)


def plot_samples(samples: Tensor, data: Tensor, path: str | Path, caption: str = "") -> None:
    """Model samples beside data points (both ``[N, 2]``), on the data's limits; ``caption``
    (the sampler, its steps and NFE) titles the samples."""
    limits = _limits(data)
    fig = Figure(figsize=(9, 4.4))
    names = (f"samples{', ' + caption if caption else ''}", "data")
    for ax, points, name in zip(fig.subplots(1, 2), (samples, data), names, strict=True):
        xy = points.detach().float().cpu()
        shown = ((xy >= limits[0]) & (xy <= limits[1])).all(dim=1).float().mean()
        ax.scatter(xy[:, 0], xy[:, 1], **POINT)
        _style(ax, f"{name} ({len(xy)}, {shown:.0%} in view)", limits)
    save_figure(fig, path, DPI)


def grid_cells(points: Tensor, per_axis: int = 4) -> Tensor:
    """``[N]``: the cell of each of ``points [N, 2]`` in a ``per_axis x per_axis`` grid over
    their range rounded out to integers (for the checkerboard, its side-2 squares), numbered
    row by row."""
    low, high = points.min(0).values.floor(), points.max(0).values.ceil()
    ij = ((points - low) / (high - low).clamp_min(1e-12) * per_axis).floor()
    ij = ij.clamp(0, per_axis - 1).long()
    return ij[:, 1] * per_axis + ij[:, 0]


@torch.no_grad()
def plot_transform(
    model: NDM,
    data: Tensor,
    path: str | Path,
    times: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> None:
    """``F_phi(x, t)`` of data points ``x`` [N, 2] at each of ``times``, one panel each (as
    the paper's Figure 2a), each point coloured by the cell of ``x`` in a 4 x 4 grid over
    the data to show where it goes; titles give ``E||F(x, t) - x||^2 / E||x||^2``."""
    param = next(model.parameters())
    x = data.to(device=param.device, dtype=param.dtype)
    images = [model.process.data_transform(x, torch.full_like(x[:, 0], t)).cpu() for t in times]
    moved = transform_displacement(model, x, torch.tensor(times)).tolist()
    cells = grid_cells(data.detach().float().cpu())
    limits = _limits(*images)
    fig = Figure(figsize=(3.2 * len(times) + 1, 3.4))
    axes = fig.subplots(1, len(times), squeeze=False)[0]
    for ax, image, t, r in zip(axes, images, times, moved, strict=True):
        shown = ax.scatter(
            image[:, 0], image[:, 1], c=cells, cmap="tab20", vmin=-0.5, vmax=15.5, **POINT
        )
        _style(ax, f"F(x, t={t:g}), moved {r:.2g}", limits)
    fig.colorbar(shown, ax=list(axes), fraction=0.02, ticks=range(0, 16, 3),
                 label="cell of x (4 x 4 grid)")  # fmt: skip
    save_figure(fig, path, DPI)


@torch.no_grad()
def plot_scale(
    process: FlowDiffusion,
    data: Tensor,
    path: str | Path,
    times: Sequence[float] = (0.25, 0.5, 0.75),
) -> None:
    """An NFDM's learned scale: each data point ``x`` [N, 2] coloured by
    ``log(sigma(x, t) / sigma_t)`` averaged over the two dimensions, one panel for each of
    ``times`` (blue: less noise than the reference schedule, red: more); titles give the
    mean over the points."""
    param = next(process.parameters())
    x = data.to(device=param.device, dtype=param.dtype)
    ratios = [process.log_scale_ratio(x, torch.full_like(x[:, 0], t)).mean(1).cpu() for t in times]
    bound = max(max(float(r.abs().max()) for r in ratios), 1e-6)
    points = data.detach().float().cpu()
    fig = Figure(figsize=(3.2 * len(times) + 1, 3.4))
    axes = fig.subplots(1, len(times), squeeze=False)[0]
    for ax, ratio, t in zip(axes, ratios, times, strict=True):
        shown = ax.scatter(points[:, 0], points[:, 1], c=ratio, cmap="coolwarm", vmin=-bound,
                           vmax=bound, s=POINT["s"], linewidths=0)  # fmt: skip
        _style(ax, f"t={t:g}, mean {float(ratio.mean()):+.2g}", _limits(points))
    fig.colorbar(shown, ax=list(axes), fraction=0.02, label="log(sigma(x, t) / sigma_t)")
    save_figure(fig, path, DPI)


def plot_trajectories(
    trajectory: Tensor, path: str | Path, data: Tensor | None = None, max_paths: int = 300
) -> None:
    """Sampling paths ``trajectory [S+1, B, 2]`` from noise (first row) to data (last row):
    up to ``max_paths`` paths, start points in black and end points in red, on the limits
    of ``data [N, 2]`` and the bulk of the noise (of the samples without ``data``)."""
    paths = trajectory[:, :max_paths].detach().float().cpu()
    limits = _limits(paths[-1] if data is None else data, paths[0].clamp(-3, 3))
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(paths[..., 0], paths[..., 1], color="tab:blue", alpha=0.25, linewidth=0.5)
    ends = {"s": 4, "zorder": 3}
    ax.scatter(paths[0, :, 0], paths[0, :, 1], color="black", label="noise (t = 1)", **ends)
    ax.scatter(paths[-1, :, 0], paths[-1, :, 1], color="tab:red", label="sample (t = 0)", **ends)
    ax.legend(loc="upper right", fontsize=8)
    _style(ax, f"ODE paths ({paths.shape[1]})", limits)
    save_figure(fig, path, DPI)
