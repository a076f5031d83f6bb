"""Objectives and likelihood: the NELBO as named per-example terms in nats, the ODE NLL, and
the one conversion to bits/dim."""

from ndm.losses.likelihood import bits_per_dim, continuous_nelbo, discrete_nelbo, ode_nll
from ndm.losses.objectives import LossTerms, continuous_nelbo_terms, discrete_nelbo_terms

__all__ = [
    "LossTerms",
    "bits_per_dim",
    "continuous_nelbo",
    "continuous_nelbo_terms",
    "discrete_nelbo",
    "discrete_nelbo_terms",
    "ode_nll",
]
