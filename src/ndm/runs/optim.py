"""The optimisation of a run: AdamW's parameter groups, the learning-rate warm-up, gradient
clipping, and one step over a global batch cut into micro-batches."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.runs.config import RunConfig, TrainConfig
from ndm.runs.distributed import Distributed, mean_over_processes


def warmup(steps: int, restart: int = 0) -> Callable[[int], float]:
    """LR factor rising linearly to 1 over the first ``steps`` steps, and again over the
    ``steps`` steps from step ``restart`` on."""

    def factor(step: int) -> float:
        since = step - restart if step >= restart else step
        return min(1.0, (since + 1) / steps) if steps > 0 else 1.0

    return factor


def is_transform_parameter(name: str) -> bool:
    """Whether the parameter ``name`` is one of the forward process's ``phi``: of the
    transform ``F_phi``, or of an NFDM's mean-scale network and volatility."""
    return any(part in f".{name}" for part in (".process.transform.", ".process.volatility."))


def transform_and_rest(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters of the transform (:func:`is_transform_parameter`) and all others."""
    phi, rest = [], []
    for name, param in model.named_parameters():
        (phi if is_transform_parameter(name) else rest).append(param)
    return phi, rest


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one at ``cfg.lr``, or, with ``cfg.transform_lr``
    set, the rest at ``lr`` (first: the logged ``lr``) and the transform's at
    ``transform_lr`` (0 freezes it: AdamW then moves it by exactly nothing); learned
    schedule end points (which weight decay would pull towards 0) at ``lr`` without weight
    decay."""
    params = list(model.named_parameters())
    ends = [p for name, p in params if ".endpoints." in f".{name}"]
    params = [(name, p) for name, p in params if ".endpoints." not in f".{name}"]
    groups = [{"params": ends, "weight_decay": 0.0}] if ends else []
    if cfg.transform_lr is None:
        return [{"params": [p for _, p in params]}, *groups]
    rest = [p for name, p in params if not is_transform_parameter(name)]
    phi = [p for name, p in params if is_transform_parameter(name)]
    return [{"params": rest}] + ([{"params": phi, "lr": cfg.transform_lr}] if phi else []) + groups


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """``grad_norm_phi``: the norm of the loss gradient over the transform's parameters
    (``process.transform``), and ``grad_norm_theta`` over all others (predictor, schedule,
    autoencoder); empty when the transform has no parameters with gradients."""
    phi, theta = (
        [torch.linalg.vector_norm(p.grad.float()) for p in group if p.grad is not None]
        for group in transform_and_rest(model)
    )
    if not phi:
        return {}
    return {
        "grad_norm_phi": torch.linalg.vector_norm(torch.stack(phi)).item(),
        "grad_norm_theta": torch.linalg.vector_norm(torch.stack(theta)).item() if theta else 0.0,
    }


def clip_gradients(model: nn.Module, max_norm: float, apart: bool = False) -> Tensor:
    """Scale the gradients so that their norm is at most ``max_norm``: over all parameters,
    or (``apart``) over the transform's (:func:`is_transform_parameter`) and over the rest,
    each on its own. Returns the norm of all gradients before clipping."""
    if not apart:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    groups = transform_and_rest(model)
    norms = [torch.nn.utils.clip_grad_norm_(group, max_norm) for group in groups if group]
    return torch.linalg.vector_norm(torch.stack(norms))


def optimisation_step(
    model: NDM | LatentNDM | DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[Tensor, torch.Generator]],
    cfg: RunConfig,
    place: Distributed,
) -> dict[str, float]:
    """One clipped optimiser step on this process's micro-batches ``(x, noise generator)``;
    returns the model's losses (the optimised loss, the NELBO, its terms and any penalty),
    the learning rate and the gradient norm before clipping (also split between the
    transform and the rest, :func:`gradient_norms`), averaged over processes.
    Raises ``FloatingPointError``, leaving the parameters untouched, when the loss or the
    gradient is not finite."""
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    bf16 = cfg.train.precision == "bf16"
    for i, (x, generator) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not place.enabled else model.no_sync()
        with sync:
            with torch.autocast(place.device.type, torch.bfloat16, enabled=bf16):
                losses = model(x, generator)
            (losses["loss"].float().mean() / len(micro_batches)).backward()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float().mean().item()
    norms = gradient_norms(model)
    grad_norm = clip_gradients(model, cfg.train.grad_clip, cfg.train.grad_clip_scope == "apart")
    values = {k: v / len(micro_batches) for k, v in sums.items()}
    values = mean_over_processes(values | {"grad_norm": grad_norm.item()} | norms, place)
    if not all(math.isfinite(values[k]) for k in ("loss", "grad_norm")):
        raise FloatingPointError(
            f"non-finite loss or gradient {{'loss': {values['loss']}, "
            f"'grad_norm': {values['grad_norm']}}}"
        )
    values["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step()
    return values
