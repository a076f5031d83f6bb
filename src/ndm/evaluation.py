"""Test-set likelihood metrics: ODE NLL and NELBO, in nats per example and bits/dim."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ndm.config import EvalConfig
from ndm.likelihood import bits_per_dim
from ndm.model import NDM

BATCH = 500


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    n = values.numel()
    stderr = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return float(values.mean()), stderr


def evaluate(model: NDM, test_x: Tensor, cfg: EvalConfig, entropy: float | None) -> dict:
    """Metrics on the first ``cfg.n_eval`` test points, evaluated in batches of 500.

    Keys (nats per example unless ``_bpd``): ``nll`` and ``nll_stderr`` (probability-flow
    ODE, exact divergence, dopri5 at ``cfg.rtol``/``cfg.atol``), ``nll_nfe`` (network
    evaluations per batch, averaged), ``nelbo``, ``nelbo_stderr`` and its ``nelbo_prior``,
    ``nelbo_diffusion``, ``nelbo_reconstruction`` terms, the ``_bpd`` versions of NLL and
    NELBO, and ``entropy`` / ``entropy_bpd`` of the data when known (else ``None``).
    """
    param = next(model.parameters())
    x = test_x[: cfg.n_eval].to(device=param.device, dtype=param.dtype)
    dims = x[0].numel()
    nll, nfes, terms = [], [], {"prior": [], "diffusion": [], "reconstruction": [], "total": []}
    generator = torch.Generator(param.device).manual_seed(0)
    for batch in x.split(BATCH):
        batch_nll, nfe = model.nll(batch, divergence="exact", rtol=cfg.rtol, atol=cfg.atol)
        nll.append(batch_nll.detach())
        nfes.append(nfe)
        nelbo = model.nelbo(batch, cfg.nelbo_time_samples, generator)
        for key, value in nelbo.as_dict().items():
            terms[key].append(value.detach())

    def bpd(nats: float) -> float:
        return float(bits_per_dim(torch.tensor(nats), dims))

    nll_mean, nll_stderr = _mean_and_stderr(torch.cat(nll))
    nelbo_mean, nelbo_stderr = _mean_and_stderr(torch.cat(terms.pop("total")))
    metrics = {
        "n_eval": x.shape[0],
        "nll": nll_mean,
        "nll_stderr": nll_stderr,
        "nll_bpd": bpd(nll_mean),
        "nll_bpd_stderr": bpd(nll_stderr),
        "nll_nfe": sum(nfes) / len(nfes),
        "nelbo": nelbo_mean,
        "nelbo_stderr": nelbo_stderr,
        "nelbo_bpd": bpd(nelbo_mean),
        "nelbo_bpd_stderr": bpd(nelbo_stderr),
    }
    metrics |= {f"nelbo_{key}": float(torch.cat(value).mean()) for key, value in terms.items()}
    metrics["entropy"] = entropy
    metrics["entropy_bpd"] = None if entropy is None else bpd(entropy)
    return metrics
