"""What a trained transform does: how far ``F_phi`` moves the data, and what it is worth to
the bound.

* :func:`transform_displacement`: ``r(t) = E||F(x, t) - x||^2 / E||x||^2`` over a batch, at
  given times; 0 for the identity (DDPM), and the size of what ``F`` changes otherwise.
* :func:`identity_transform_gap`: the NELBO of a model against the NELBO of the same model
  (schedule, predictor, variances, decoder) with ``F`` replaced by the identity at
  evaluation, per example and with the same noise. A positive gap says that the predictor
  relies on ``F``; a gap near 0 says that ``F`` is not used.

The share of the loss gradient that reaches ``phi`` during training is logged by the
training loop itself (``grad_norm_phi`` and ``grad_norm_theta`` of ``metrics.jsonl``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ndm.model import NDM
from ndm.process import NeuralDiffusion
from ndm.transforms import IdentityTransform


@torch.no_grad()
def transform_displacement(model: NDM, x: Tensor, times: Tensor) -> Tensor:
    """``[K]``: ``sum_b ||F(x_b, t_k) - x_b||^2 / sum_b ||x_b||^2`` for the batch ``x [B, ...]``
    and each of ``times [K]`` in ``[0, 1]``."""
    model.check_data(x)
    if times.dim() != 1 or times.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D tensor, got shape {list(times.shape)}")
    scale = x.square().sum()
    if scale == 0:
        raise ValueError("the batch is all zeros: the displacement is relative to ||x||^2")
    moved = []
    for t in times.to(x):
        fx = model.process.transform.value(x, t.expand(x.shape[0]))
        moved.append((fx - x).square().sum() / scale)
    return torch.stack(moved)


def with_identity_transform(model: NDM) -> NDM:
    """``model`` with ``F(x, t) = x``: the same schedule, predictor, objective and decoder
    (modules shared)."""
    return NDM(
        NeuralDiffusion(model.process.schedule, IdentityTransform()),
        model.predictor,
        model.objective,
        model.num_steps,
        model.time_sampling,
        model.decoder,
        model.kinetic_weight,
        model.num_levels,
    )


@torch.no_grad()
def identity_transform_gap(model: NDM, x: Tensor, seed: int = 0, **nelbo: object) -> dict:
    """NELBO of ``model`` and of :func:`with_identity_transform` on the batch ``x [B, ...]``
    in nats per example, with noise from generators seeded alike (``nelbo``: the options
    of :meth:`NDM.nelbo`). Returns ``nelbo``, ``nelbo_identity``, their means, and ``gap``
    ``= mean(nelbo_identity - nelbo)`` with ``gap_stderr``, the standard error of the paired
    differences."""
    values = {}
    for key, candidate in (("nelbo", model), ("nelbo_identity", with_identity_transform(model))):
        generator = torch.Generator(x.device).manual_seed(seed)
        values[key] = candidate.nelbo(x, generator=generator, **nelbo).total
    difference = values["nelbo_identity"] - values["nelbo"]
    spread = difference.std().item() if difference.numel() > 1 else math.nan
    return values | {
        "nelbo_mean": values["nelbo"].mean().item(),
        "nelbo_identity_mean": values["nelbo_identity"].mean().item(),
        "gap": difference.mean().item(),
        "gap_stderr": spread / math.sqrt(difference.numel()),
    }
