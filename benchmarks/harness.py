"""The one harness of the benchmarks: the environment line every table names, markdown
tables, printing and keeping a table, means over seeds, and the run cache (a run is trained
once and reused, and so is each row measured on it).

Every benchmark is a module of this package, run from the repository's root as
``python -m benchmarks.NAME``; each writes its table under ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ndm.data.atomic import atomic_write
from ndm.models.protocol import DiffusionModel
from ndm.runs.checkpoint import load_checkpoint
from ndm.runs.config import RunConfig
from ndm.runs.folder import METRICS, load_run, read_metrics
from ndm.runs.training import train


def environment(threads: int | None = None) -> str:
    """``"torch VERSION, N threads, MACHINE"``: what a table's times were measured on
    (``threads``: the threads the runs used, default this process's)."""
    threads = torch.get_num_threads() if threads is None else threads
    return f"torch {torch.__version__}, {threads} threads, {platform.machine()}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a markdown table with ``header`` and one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def markdown_cells(line: str) -> list[str]:
    """The cells of one line of a markdown table (the inverse of :func:`markdown_table`)."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def report(text: str, out: Path | str | None) -> None:
    """Print ``text`` and, when ``out`` is given, write it there (folders created)."""
    print(text, flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def mean_and_stderr(values: list[float], digits: str = ".3f") -> str:
    """``"mean ± standard error"`` of ``values``; one value alone, which has no error."""
    if len(values) == 1:
        return f"{values[0]:{digits}}"
    spread = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):{digits}} ± {spread:{digits}}"


def trained_model(cfg: RunConfig, run_dir: Path) -> DiffusionModel:
    """The EMA model of ``run_dir``: loaded when its checkpoint has reached
    ``cfg.train.steps``, else trained there (resumed from its checkpoint if any)."""
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= cfg.train.steps:
        return load_run(run_dir)[1]
    return train(cfg, run_dir, resume=checkpoint.exists())


def cached_row(run_dir: Path, key: str, compute: Callable[[], dict]) -> dict:
    """The row ``key`` of ``run_dir/benchmark_rows.json`` if it was measured before, else
    ``compute()``, kept there (written atomically) so that a rerun or a run of other rows
    reuses it. ``key`` names the grid and every setting the row depends on."""
    path = run_dir / "benchmark_rows.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    if key not in rows:
        rows[key] = compute()
        text = json.dumps(rows, indent=1).encode()
        atomic_write(path, lambda f: f.write(text))
    return rows[key]


def training_seconds(run_dir: Path) -> float:
    """The time the run of ``run_dir`` spent in training steps, from its ``metrics.jsonl``
    (each line's ``seconds_per_step`` times the steps since the line before)."""
    total, previous = 0.0, 0
    for line in read_metrics(run_dir / METRICS):
        total += line["seconds_per_step"] * (line["step"] - previous)
        previous = line["step"]
    return total
