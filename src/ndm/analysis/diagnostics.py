"""What a trained transform does: how far ``F_phi`` moves the data, and what it is worth to
the bound.

* :func:`transform_displacement`: ``r(t) = E||F(x, t) - x||^2 / E||x||^2`` over a batch, at
  given times; 0 for the identity (DDPM), and the size of what ``F`` changes otherwise.
* :func:`identity_transform_gap`: the NELBO of a model against the NELBO of the same model
  (schedule, predictor, variances, decoder) with ``F`` replaced by the identity at
  evaluation, per example and with the same noise. A positive gap says that the predictor
  relies on ``F``; a gap near 0 says that ``F`` is not used.

* :func:`gradient_signal_to_noise`: how much of the loss gradient over ``phi`` (and over
  ``theta``) is a direction shared by minibatches rather than noise. A small ratio makes
  Adam's steps a random walk that leaves ``F`` where it started.

The share of the loss gradient that reaches ``phi`` during training is logged by the
training loop itself (``grad_norm_phi`` and ``grad_norm_theta`` of ``metrics.jsonl``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.transforms import IdentityTransform
from ndm.models.ndm import NDM


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
        fx = model.process.data_transform(x, t.expand(x.shape[0]))
        moved.append((fx - x).square().sum() / scale)
    return torch.stack(moved)


def with_identity_transform(model: NDM) -> NDM:
    """``model`` with ``F(x, t) = x``: the same schedule, predictor, objective and decoder
    (modules shared). An NFDM has no ``F`` to replace: ``ValueError``."""
    if not isinstance(model.process, NeuralDiffusion):
        raise ValueError("an NFDM learns its mean and scale, not an F to replace by x")
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


def signal_to_noise(gradients: Tensor) -> float:
    """``||E g|| / sqrt(E||g - E g||^2)`` from ``gradients [K, P]`` of ``K >= 2`` independent
    minibatches: the per-minibatch noise ``n^2 = sum_k ||g_k - mean||^2 / (K - 1)`` and the
    squared norm of the mean less the noise's share, ``max(||mean||^2 - n^2 / K, 0)``
    (unbiased); ``inf`` without noise."""
    if gradients.dim() != 2 or gradients.shape[0] < 2:
        raise ValueError(f"need gradients [K >= 2, P], got shape {list(gradients.shape)}")
    k = gradients.shape[0]
    mean = gradients.double().mean(0)
    noise = (gradients.double() - mean).square().sum().item() / (k - 1)
    if noise == 0:
        return math.inf
    return math.sqrt(max(mean.square().sum().item() - noise / k, 0.0) / noise)


def gradient_signal_to_noise(model: NDM, batches: Sequence[Tensor], seed: int = 0) -> dict:
    """:func:`signal_to_noise` of the training loss's gradient (the batch mean of
    :meth:`NDM.loss`, noise from generators seeded ``seed + k`` for batch ``k``) over the
    transform's parameters (``snr_phi``, absent when it has none) and over all others
    (``snr_theta``), from ``batches``, each ``[B, ...]``."""
    phi = [p for p in model.process.transform.parameters() if p.requires_grad]
    in_phi = {id(p) for p in phi}
    theta = [p for p in model.parameters() if p.requires_grad and id(p) not in in_phi]
    groups = {"phi": phi, "theta": theta}
    groups = {name: params for name, params in groups.items() if params}
    params = [p for group in groups.values() for p in group]
    rows: dict[str, list[Tensor]] = {name: [] for name in groups}
    for k, x in enumerate(batches):
        generator = torch.Generator(x.device).manual_seed(seed + k)
        loss = model.loss(x, generator).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ])  # fmt: skip
        start = 0
        for name, group in groups.items():
            size = sum(p.numel() for p in group)
            rows[name].append(flat[start : start + size])
            start += size
    return {f"snr_{name}": signal_to_noise(torch.stack(values)) for name, values in rows.items()}
