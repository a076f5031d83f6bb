"""Trained weights out of a run, and back in: ``ndm export RUN OUT`` and :func:`load_pretrained`.

An export folder holds ``model.safetensors`` (the EMA weights of the model, every tensor its
own copy) and ``model.json`` (the run's config, the example shape, the number of levels of
image data and the training step). It is all a model needs: no optimiser or RNG state, and
nothing in it is code. Every kind of run exports: points, images and latent NDMs.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ndm.data.atomic import TEMPORARY_SUFFIX, atomic_write, creation_mode
from ndm.data.loading import is_image_dataset
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.runs.builders import build_run_model, mlp_weights
from ndm.runs.checkpoint import save_json
from ndm.runs.config import RunConfig, config_from_record, config_to_dict
from ndm.runs.distributed import resolve_device
from ndm.runs.folder import read_run

WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"


#: The largest ``model.json`` read (a description is a few kilobytes).
MAX_DESCRIPTION_BYTES = 1 << 20
#: The most levels an image export may describe (16-bit data).
MAX_LEVELS = 1 << 16


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the EMA weights and description of the run in ``run_dir`` into the new folder
    ``out_dir``; refuse an ``out_dir`` that already holds anything, or the run folder
    itself. The export is built in a temporary folder beside ``out_dir`` and renamed into
    place whole, so that an interrupted export leaves no ``out_dir`` and of two exports to
    one ``out_dir`` only one succeeds. The description leaves out the paths of the
    training machine (``data.path``, ``data.cache``). Returns the weights file's path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"export into {out_dir}, the run folder itself, is refused")
    _require_free(out_dir)
    run = read_run(run_dir)
    weights = {k: v.detach().clone().contiguous() for k, v in run.model.state_dict().items()}
    shared = replace(run.config, data=replace(run.config.data, path="", cache=""))
    description = {
        "config": config_to_dict(shared),
        "shape": list(run.shape),
        "num_levels": run.num_levels,
        "step": run.step,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.",
                                    suffix=TEMPORARY_SUFFIX))  # fmt: skip
    try:
        atomic_write(building / WEIGHTS, lambda file: file.write(save(weights)))
        save_json(building / DESCRIPTION, description)
        os.chmod(building, creation_mode(0o777))
        try:
            os.rename(building, out_dir)  # onto nothing, or an empty folder; never a full one
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise FileExistsError(
                    f"{out_dir} already holds an export or other files; choose another"
                ) from error
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir / WEIGHTS


def _require_free(out_dir: Path) -> None:
    """``out_dir`` must not exist, or be an empty folder."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        held = "an export" if (out_dir / WEIGHTS).exists() else "other files"
        raise FileExistsError(f"{out_dir} already holds {held}; choose another")


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[RunConfig, NDM | LatentNDM]:
    """``(config, model in eval mode on device)`` from an export folder of :func:`export_run`;
    ``ValueError`` naming the folder when it is missing pieces, does not fit its config, or
    holds weights that are not finite float32. ``model.json`` and the safetensors header
    (names, shapes, dtypes) are checked against each other before the model is built."""
    folder = Path(folder)
    for name in (WEIGHTS, DESCRIPTION):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: not an ndm export folder")
    try:
        cfg, shape, num_levels = _description(folder / DESCRIPTION)
        header = _header(folder / WEIGHTS)
        _check_size(cfg, header)
        model = build_run_model(cfg, shape, num_levels)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        if header != expected:
            raise ValueError(_header_mismatch(header, expected))
        weights = load_file(folder / WEIGHTS)
        bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise ValueError(f"weights {bad[:3]} hold NaN or inf")
        model.load_state_dict(weights)
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        reason = str(error).strip().split("\n")[0][:200]
        raise ValueError(f"{folder} does not hold a usable ndm export ({reason})") from error
    return cfg, model.to(resolve_device(str(device))).eval()


def _description(path: Path) -> tuple[RunConfig, tuple[int, ...], int | None]:
    """The config, example shape and number of levels of ``model.json``, each checked."""
    if path.stat().st_size > MAX_DESCRIPTION_BYTES:
        raise ValueError(f"{DESCRIPTION} is larger than {MAX_DESCRIPTION_BYTES} bytes")
    description = json.loads(path.read_text())
    if not isinstance(description, dict):
        raise ValueError(f"{DESCRIPTION} is not a JSON object")
    cfg = config_from_record(description["config"])
    shape, levels = description["shape"], description["num_levels"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 3
            and all(type(n) is int and 0 < n <= 4096 for n in shape)):  # fmt: skip
        raise ValueError(f"shape must be 1 to 3 sizes in 1..4096, got {str(shape)[:80]}")
    if levels is not None and not (type(levels) is int and 2 <= levels <= MAX_LEVELS):
        raise ValueError(f"num_levels must be null or an integer in 2..{MAX_LEVELS}, got {levels}")
    return cfg, tuple(shape), levels


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name: (shape, dtype) of each tensor of a safetensors file, from its header alone."""
    with safe_open(path, framework="pt") as file:
        header = {}
        for key in file.keys():  # noqa: SIM118 (safe_open is no mapping)
            piece = file.get_slice(key)
            header[key] = (tuple(piece.get_shape()), _DTYPES.get(piece.get_dtype()))
    return header


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool}  # fmt: skip


def _check_size(cfg: RunConfig, header: dict) -> None:
    """An MLP config must describe about as many weights as the file holds, before a model
    of its size is built (``hidden: 6000`` would allocate gigabytes first)."""
    if cfg.model.architecture not in ("auto", "mlp") or is_image_dataset(cfg.data.dataset):
        return
    held = sum(math.prod(shape) for shape, _ in header.values())
    described = mlp_weights(cfg.model)
    if described > 2 * held + 10**6:
        raise ValueError(
            f"{DESCRIPTION} describes an MLP of about {described} weights; {WEIGHTS} holds {held}"
        )


def _header_mismatch(header: dict, expected: dict) -> str:
    """What differs between a weights file's header and the model its config builds."""
    missing, extra = (
        sorted(expected.keys() - header.keys()),
        sorted(header.keys() - expected.keys()),
    )
    if missing or extra:
        return f"weights file and config disagree: missing {missing[:3]}, unexpected {extra[:3]}"
    key = next(k for k in expected if header[k] != expected[k])
    (shape, dtype), (want_shape, want_dtype) = header[key], expected[key]
    return f"weight {key} is {dtype} {list(shape)}, the config's model has {want_dtype} {list(want_shape)}"
