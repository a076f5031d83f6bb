"""Run folders of the benchmarks: a run is trained once, then reused."""

from __future__ import annotations

from pathlib import Path

from ndm.checkpoint import load_checkpoint
from ndm.config import RunConfig
from ndm.latent import LatentNDM
from ndm.model import NDM
from ndm.training import load_run, train


def trained_model(cfg: RunConfig, run_dir: Path) -> NDM | LatentNDM:
    """The EMA model of ``run_dir``: loaded when its checkpoint has reached
    ``cfg.train.steps``, else trained there (resumed from its checkpoint if any)."""
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= cfg.train.steps:
        return load_run(run_dir)[1]
    return train(cfg, run_dir, resume=checkpoint.exists())
