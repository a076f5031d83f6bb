"""Writing a figure: on matplotlib's Agg canvas, aside and renamed into place."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ndm.data.atomic import atomic_write


def save_figure(fig: Figure, path: str | Path, dpi: int) -> None:
    """Write ``fig`` to ``path`` (its format from the suffix, PNG without one) at ``dpi``,
    through :func:`~ndm.data.atomic.atomic_write`: a link at ``path`` is replaced, not
    followed."""
    FigureCanvasAgg(fig)
    form = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda file: fig.savefig(file, format=form, dpi=dpi, bbox_inches="tight"))
