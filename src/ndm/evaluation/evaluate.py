"""Test-set metrics: ODE NLL and NELBO (nats per example and bits/dim), and FID for images.

Toy points are evaluated as they are. Images (``L`` levels) get the ODE NLL and the NELBO of
the same uniformly dequantised test images (the density the model was trained on), plus
``log2(L / 2)`` bits/dim (:func:`ndm.losses.likelihood.dequantisation_offset`): both bound
``-log2 P(levels)`` per dimension. The offset is counted in the reconstruction term's bits/dim,
so that the terms add up to the NELBO. A latent NDM bounds the same discrete ``-log P(x)``
through its decoder over the levels, reported per dimension of the data. One function,
:func:`evaluate`, serves both through the model protocol
(:class:`~ndm.models.protocol.DiffusionModel`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ndm.data.images import quantise
from ndm.data.loading import Splits, model_input
from ndm.losses.likelihood import bits_per_dim
from ndm.models.protocol import DiffusionModel
from ndm.nets.classifier import accuracy, train_classifier
from ndm.runs.config import EvalConfig

BATCH = 500
IMAGE_BATCH = 100


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    n = values.numel()
    stderr = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return float(values.mean()), stderr


def likelihood_metrics(
    nll: list[Tensor],
    nfes: list[int],
    divergence: str,
    terms: dict[str, list[Tensor]],
    dims: int,
    offset: float = 0.0,
) -> dict:
    """Means, standard errors and bits/dim (over ``dims`` data dimensions; ``offset`` added
    to the NLL's, the NELBO's and its reconstruction term's) of per-batch NLLs ``[B]`` (no
    ``nll`` keys when there are none) and NELBO terms ``[B]`` (``"total"`` among them), in
    the keys of :func:`evaluate`."""

    def bpd(nats: float, shift: float = 0.0) -> float:
        return float(bits_per_dim(torch.tensor(nats), dims, shift))

    terms = dict(terms)
    total = torch.cat(terms.pop("total"))
    nelbo_mean, nelbo_stderr = _mean_and_stderr(total)
    metrics: dict = {"n_eval": int(total.shape[0])}
    if nll:
        nll_mean, nll_stderr = _mean_and_stderr(torch.cat(nll))
        metrics |= {
            "nll": nll_mean,
            "nll_stderr": nll_stderr,
            "nll_bpd": bpd(nll_mean, offset),
            "nll_bpd_stderr": bpd(nll_stderr),
            "nll_nfe": sum(nfes) / len(nfes),
            "nll_divergence": divergence,
        }
    metrics |= {
        "nelbo": nelbo_mean,
        "nelbo_stderr": nelbo_stderr,
        "nelbo_bpd": bpd(nelbo_mean, offset),
        "nelbo_bpd_stderr": bpd(nelbo_stderr),
    }
    for key, values in terms.items():
        mean = float(torch.cat(values).mean())
        metrics[f"nelbo_{key}"] = mean
        metrics[f"nelbo_{key}_bpd"] = bpd(mean, offset if key == "reconstruction" else 0.0)
    return metrics


def evaluate(
    model: DiffusionModel,
    splits: Splits,
    cfg: EvalConfig,
    with_nll: bool = True,
    per_example: bool = False,
) -> dict:
    """Likelihood metrics of a pixel or latent model on the first ``cfg.n_eval`` test examples.

    Keys (nats per example unless ``_bpd``): ``nll`` and ``nll_stderr`` (probability-flow
    ODE, dopri5 at ``cfg.rtol``/``cfg.atol``, exact divergence for points and Hutchinson
    with ``cfg.probes`` probes for images unless ``cfg.divergence`` says otherwise),
    ``nll_nfe`` (network evaluations per batch, averaged), ``nelbo``, ``nelbo_stderr`` and
    its terms (``nelbo_prior``, ``nelbo_diffusion``, ``nelbo_reconstruction``; a latent NDM
    adds ``nelbo_decoder``, ``-log p(x | y)``, and ``nelbo_encoder``, ``-H[q(y | x)]``), the
    ``_bpd`` version of each, what :meth:`~ndm.models.protocol.DiffusionModel.evaluation_info`
    adds, and ``entropy`` / ``entropy_bpd`` of the data when known (else ``None``).
    Without ``with_nll`` the ODE is not solved and the ``nll`` keys are absent (the NELBO of
    another grid of the same model, whose ODE is the same); so are they, with
    ``nll_failure`` saying why, when a solve needs more than ``cfg.nll_max_steps`` steps.
    With ``per_example``, ``per_example_bpd`` holds the ``nll`` (when solved) and ``nelbo``
    of each test example ``[n_eval]`` in bits/dim, for differences of two models paired by
    example (:func:`paired_difference`): every model draws the same dequantisation, probes
    and NELBO noise from one generator seeded 0.
    """
    splits.require_test_examples()
    param = next(model.parameters())
    test = splits.test[: cfg.n_eval].to(param.device)
    dims, offset = math.prod(splits.shape), model.bits_offset
    generator = torch.Generator(param.device).manual_seed(0)
    divergence = cfg.divergence
    if divergence == "auto":
        divergence = "hutchinson" if splits.is_image else "exact"
    nll, nfes = [], []
    failure = None  # why the NLL is left out, when its solve takes more than nll_max_steps
    terms: dict[str, list[Tensor]] = {}
    batches = test.split(IMAGE_BATCH if splits.is_image else BATCH)
    stage = "NLL and NELBO" if with_nll else "NELBO"
    for batch in tqdm(batches, desc=f"{stage} of {test.shape[0]} test examples", unit="batch"):
        x = model.likelihood_input(batch, generator)
        if with_nll and failure is None:
            try:
                batch_nll, nfe = _nll(model, x, generator, divergence, cfg)
                nll.append(batch_nll)
                nfes.append(nfe)
            except FloatingPointError as error:
                if cfg.nll_max_steps is None:
                    raise
                failure = f"not solved within {cfg.nll_max_steps} dopri5 steps ({error})"
                nll, nfes = [], []
        nelbo = model.nelbo(x, cfg.nelbo_time_samples, generator, cfg.nelbo_terms)
        for key, value in nelbo.as_dict().items():
            terms.setdefault(key, []).append(value.detach())

    metrics = likelihood_metrics(nll, nfes, divergence, terms, dims, offset)
    if failure is not None:
        metrics["nll_failure"] = failure
    if per_example:
        values = {"nelbo": torch.cat(terms["total"])} | ({"nll": torch.cat(nll)} if nll else {})
        metrics["per_example_bpd"] = {
            key: bits_per_dim(value.double(), dims, offset).tolist()
            for key, value in values.items()
        }
    entropy = splits.entropy
    entropy_bpd = None if entropy is None else float(bits_per_dim(torch.tensor(entropy), dims))
    return metrics | model.evaluation_info() | {"entropy": entropy, "entropy_bpd": entropy_bpd}


def _nll(
    model: DiffusionModel, x: Tensor, generator: torch.Generator, divergence: str, cfg: EvalConfig
) -> tuple[Tensor, int]:
    """``(-log p(x) [B], nfe)`` of one batch along the ODE, as ``cfg`` asks."""
    nll, nfe = model.nll(
        x,
        generator=generator,
        divergence=divergence,
        rtol=cfg.rtol,
        atol=cfg.atol,
        num_probes=cfg.probes,
        max_steps=cfg.nll_max_steps,
    )
    return nll.detach(), nfe


def paired_difference(values: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean and standard error of ``values[i] - reference[i]`` over examples ``i``: the
    difference of two models scored on the same examples and noise, whose error leaves out
    what the examples' spread adds to each model's own."""
    if len(values) != len(reference) or len(values) < 2:
        raise ValueError(
            f"paired values need equal lengths of at least 2, got {len(values)} and "
            f"{len(reference)}"
        )
    difference = torch.tensor(values, dtype=torch.float64) - torch.tensor(
        reference, dtype=torch.float64
    )
    return _mean_and_stderr(difference)


def fid_features(splits: Splits, cfg: EvalConfig, seed: int = 0) -> tuple[nn.Module, dict]:
    """The FID feature network and what describes it: Inception-v3 from ``cfg.fid_weights``
    when given, else a small classifier trained for ``cfg.classifier_steps`` steps on the
    training images (its test accuracy is returned beside it; same seed, same network)."""
    from ndm.evaluation.fid import (  # torchmetrics: slow import
        ClassifierFeatures,
        inception_features,
    )

    if cfg.fid_weights:
        return inception_features(cfg.fid_weights), {"fid_features": "inception-v3"}
    if splits.train_labels is None:
        raise ValueError("classifier FID features need labelled training images")

    # levels are mapped to [-1, 1] batch by batch: the splits may be larger than memory
    def to_input(levels: Tensor) -> Tensor:
        return model_input(levels, splits, None, augment=False)

    classifier = train_classifier(
        splits.train, splits.train_labels, cfg.classifier_steps, seed=seed, to_input=to_input
    )
    info = {
        "fid_features": "classifier",
        "classifier_test_accuracy": accuracy(
            classifier, splits.test, splits.test_labels, to_input=to_input
        ),
    }
    return ClassifierFeatures(classifier), info


@torch.no_grad()
def sample_images(
    model: DiffusionModel,
    splits: Splits,
    n: int,
    sampler: str,
    steps: int,
    generator: torch.Generator,
    **options: object,
) -> tuple[Tensor, float]:
    """``n`` samples quantised to the data's levels, ``[n, C, H, W]`` in ``[-1, 1]``, drawn in
    batches of ``IMAGE_BATCH``; and the sampler's network evaluations per batch."""
    samples, nfes = [], []
    starts = range(0, n, IMAGE_BATCH)
    for start in tqdm(starts, desc=f"{n} samples, {sampler} {steps} steps", unit="batch"):
        size = min(IMAGE_BATCH, n - start)
        result = model.sample((size, *splits.shape), sampler, steps, generator, **options)
        samples.append(quantise(result.sample, splits.num_levels).cpu())
        nfes.append(result.nfe)
    return torch.cat(samples), sum(nfes) / len(nfes)


def sample_quality(
    model: DiffusionModel, splits: Splits, cfg: EvalConfig, features: nn.Module, steps: int
) -> dict:
    """FID between ``cfg.fid_samples`` samples (``cfg.fid_sampler`` on ``steps`` steps) and
    as many test images, with the given feature network."""
    from ndm.evaluation.fid import frechet_distance  # torchmetrics: slow import

    generator = torch.Generator(next(model.parameters()).device).manual_seed(1)
    options = {"rtol": cfg.rtol, "atol": cfg.atol} if cfg.fid_sampler == "ode" else {}
    fake, nfe = sample_images(
        model, splits, cfg.fid_samples, cfg.fid_sampler, steps, generator, **options
    )
    real = model_input(splits.test[: cfg.fid_samples], splits, None, augment=False)
    return {
        "fid": frechet_distance(real, fake, features),
        "fid_samples": cfg.fid_samples,
        "fid_sampler": cfg.fid_sampler,
        "fid_steps": steps,
        "fid_nfe": nfe,
    }
