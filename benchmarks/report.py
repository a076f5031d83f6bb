"""The one way every benchmark reports: print its markdown, and keep it in a file if asked;
and the one way it writes a mean over seeds."""

from __future__ import annotations

import math
import statistics
from pathlib import Path


def report(text: str, out: Path | str | None) -> None:
    """Print ``text`` and, when ``out`` is given, write it there (folders created)."""
    print(text, flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def mean_and_stderr(values: list[float], digits: str = ".3f") -> str:
    """``"mean ± standard error"`` of ``values`` (``nan`` for the error of one value)."""
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):{digits}} ± {spread:{digits}}"
