"""Run folders of the benchmarks: a run is trained once, then reused, and so is each row
measured on it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.runs.checkpoint import atomic_write, load_checkpoint
from ndm.runs.config import RunConfig
from ndm.runs.folder import load_run
from ndm.runs.training import train


def trained_model(cfg: RunConfig, run_dir: Path) -> NDM | LatentNDM:
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
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        total += record["seconds_per_step"] * (record["step"] - previous)
        previous = record["step"]
    return total
