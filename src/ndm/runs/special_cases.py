"""The special cases of the paper's Table 1 as configurations of this package.

Each entry of :data:`SPECIAL_CASES` is a set of :class:`~ndm.runs.config.ModelConfig` options
(the ``ndm train`` flags of :func:`special_case_flags`) and the forward marginal
``q(z_t | x)`` they select, in this package's time direction (``t = 0`` data, ``t = 1``
noise). Options not named by a case keep their defaults and may be changed freely.

- ``ddpm``: DDPM / DDIM, ``N(alpha_t x, sigma_t^2 I)`` with the linear VP schedule.
- ``flow_matching``: flow matching (OT path), ``N((1 - t) x, (sigma_min + (1 - sigma_min) t)^2 I)``.
- ``vdm``: VDM, ``N(alpha_t x, sigma_t^2 I)`` with the learned monotone ``gamma_eta(t)`` and ends.
- ``blurring``: blurring diffusion, ``N(alpha_t B_t x, sigma_t^2 I)`` with the heat blur ``B_t``.
- ``ndm``: NDM, ``N(alpha_t F_phi(x, t), sigma_t^2 I)`` with ``F_phi(x, t) = x + t NN_phi(x, t)``.

The latent model of the table (LSGM, ``F = E(x)``) is not one of these options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from ndm.runs.config import ModelConfig, flag_names


@dataclass(frozen=True)
class SpecialCase:
    """One row of Table 1.

    ``title``: the model's name in the table;
    ``options``: the :class:`~ndm.runs.config.ModelConfig` fields (name -> value) that select it;
    ``marginal``: the forward marginal ``q(z_t | x)`` they give, with the schedule written out.
    """

    title: str
    options: MappingProxyType[str, Any]
    marginal: str


def _case(title: str, marginal: str, **options: Any) -> SpecialCase:
    return SpecialCase(title, MappingProxyType(options), marginal)


_LINEAR_VP = (
    "alpha_t = exp(-B(u) / 2), sigma_t^2 = 1 - alpha_t^2, "
    "B(u) = beta_min u + (beta_max - beta_min) u^2 / 2, u = t_min + (1 - t_min) t, "
    "beta_min = 0.1, beta_max = 20, t_min = 1e-5"
)

SPECIAL_CASES: MappingProxyType[str, SpecialCase] = MappingProxyType(
    {
        "ddpm": _case(
            "DDPM / DDIM",
            "z_t ~ N(alpha_t x, sigma_t^2 I) with " + _LINEAR_VP + ". "
            "Trained on the discrete NELBO with T = 1000 steps and DDPM's fixed reverse "
            "variance sigma_tilde^2; DDIM is the same model sampled with the 'ddim' sampler.",
            transform="identity",
            schedule="linear",
            parameterisation="eps",
            objective="discrete",
            num_steps=1000,
            reverse_variance="posterior",
        ),
        "flow_matching": _case(
            "Flow matching (OT)",
            "z_t ~ N((1 - t) x, sigma_t^2 I), sigma_t = sigma_min + (1 - sigma_min) t, "
            "sigma_min = 1e-4: the paper's alpha = t', sigma = 1 - (1 - sigma_min) t' with "
            "t' = 1 - t. z_0 = x + sigma_min eps, z_1 = eps. Trained on the continuous NELBO, "
            "whose integrand here is (1 - t) ||x - x_hat||^2 / sigma_t^3; flow matching's "
            "velocity regression is ||x - x_hat||^2 / sigma_t^2. alpha_1 = 0 needs the "
            "x parameterisation.",
            transform="identity",
            schedule="fm_ot",
            parameterisation="x",
            objective="continuous",
        ),
        "vdm": _case(
            "VDM",
            "z_t ~ N(alpha_t x, sigma_t^2 I), alpha_t^2 = sigmoid(-gamma_eta(t)), "
            "sigma_t^2 = sigmoid(gamma_eta(t)), gamma_eta(t) = gamma_min + (gamma_max - "
            "gamma_min) (h(t) - h(0)) / (h(1) - h(0)) with h monotone (non-negative weights); "
            "the ends gamma_min and gamma_max start at -13.3 and 5. eta and the ends are "
            "trained with the model on the continuous NELBO, as in VDM, with one time drawn "
            "in each stratum of [0, 1] (VDM's low-discrepancy sampler also puts one time in "
            "each stratum, on a randomly shifted lattice).",
            transform="identity",
            schedule="learned",
            schedule_endpoints="learned",
            parameterisation="eps",
            objective="continuous",
            time_sampling="stratified",
        ),
        "blurring": _case(
            "Soft / blurring diffusion",
            "z_t ~ N(alpha_t B_t x, sigma_t^2 I) with " + _LINEAR_VP + "; "
            "B_t = V^T diag(d_t) V (V the orthonormal 2-D DCT-II), "
            "d_t = (1 - d_min) exp(-lambda s_t^2 / 2) + d_min, s_t = s_max sin^2(pi t / 2), "
            "lambda_uv = pi^2 (u^2 / H^2 + v^2 / W^2), s_max = 0.625 max(H, W), d_min = 1e-3. "
            "Images only.",
            transform="blur",
            schedule="linear",
            parameterisation="eps",
            objective="continuous",
        ),
        "ndm": _case(
            "NDM",
            "z_t ~ N(alpha_t F_phi(x, t), sigma_t^2 I) with " + _LINEAR_VP + "; "
            "F_phi(x, t) = x + t NN_phi(x, t), so F_phi(x, 0) = x; phi is trained with the "
            "model on the continuous NELBO.",
            transform="learned",
            schedule="linear",
            parameterisation="eps",
            objective="continuous",
        ),
    }
)


def _special_case(name: str) -> SpecialCase:
    if name not in SPECIAL_CASES:
        raise ValueError(f"unknown special case {name!r}; choose one of {sorted(SPECIAL_CASES)}")
    return SPECIAL_CASES[name]


def special_case_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`~ndm.runs.config.ModelConfig` of case ``name`` with ``overrides`` of the
    fields the case leaves free (network size, architecture, ...)."""
    case = _special_case(name)
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model options {unknown}; known: {sorted(known)}")
    clash = sorted(set(overrides) & set(case.options))
    if clash:
        raise ValueError(f"options {clash} define the special case {name!r}; they are fixed")
    return ModelConfig(**case.options, **overrides)


def special_case_flags(name: str) -> list[str]:
    """The ``ndm train`` flags that select case ``name``, e.g. ``["--transform", "identity", ...]``."""
    flags = flag_names()
    return [
        item
        for field_name, value in _special_case(name).options.items()
        for item in (flags["model", field_name], str(value))
    ]
