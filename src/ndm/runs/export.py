"""Trained weights out of a run, and back in: ``ndm export RUN OUT`` and :func:`load_pretrained`.

An export folder holds ``model.safetensors`` (the EMA weights of the model, every tensor its
own copy) and ``model.json`` (the run's config, the example shape, the number of levels of
image data and the training step). It is all a model needs: no optimiser or RNG state, and
nothing in it is code. Every kind of run exports: points, images and latent NDMs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ndm.data.atomic import atomic_write
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.runs.builders import build_run_model
from ndm.runs.checkpoint import save_json
from ndm.runs.config import RunConfig, config_from_record, config_to_dict
from ndm.runs.distributed import resolve_device
from ndm.runs.folder import read_run

WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the EMA weights and description of the run in ``run_dir`` into ``out_dir``
    (created if needed); refuse an ``out_dir`` that already holds an export, or the run
    folder itself. Returns the weights file's path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"export into {out_dir}, the run folder itself, is refused")
    existing = [name for name in (WEIGHTS, DESCRIPTION) if (out_dir / name).exists()]
    if existing:
        raise FileExistsError(f"{out_dir} already holds an export ({existing[0]}); choose another")
    run = read_run(run_dir)
    weights = {k: v.detach().clone().contiguous() for k, v in run.model.state_dict().items()}
    description = {
        "config": config_to_dict(run.config),
        "shape": list(run.shape),
        "num_levels": run.num_levels,
        "step": run.step,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / WEIGHTS, lambda file: file.write(save(weights)))
    save_json(out_dir / DESCRIPTION, description)
    return out_dir / WEIGHTS


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[RunConfig, NDM | LatentNDM]:
    """``(config, model in eval mode on device)`` from an export folder of :func:`export_run`;
    ``ValueError`` naming the file when it is missing pieces or does not fit its config."""
    folder = Path(folder)
    for name in (WEIGHTS, DESCRIPTION):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: not an ndm export folder")
    try:
        description = json.loads((folder / DESCRIPTION).read_text())
        cfg = config_from_record(description["config"])
        model = build_run_model(cfg, tuple(description["shape"]), description["num_levels"])
        weights = load_file(folder / WEIGHTS)
        model.load_state_dict(weights)
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        reason = str(error).strip().split("\n")[0][:200]
        raise ValueError(f"{folder} does not hold a usable ndm export ({reason})") from error
    return cfg, model.to(resolve_device(str(device))).eval()
