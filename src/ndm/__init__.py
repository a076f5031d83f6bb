"""Neural Diffusion Models: diffusion with a learned, time-dependent data transform ``F_phi(x, t)``.

Conventions: ``t`` in ``[0, 1]`` with ``t = 0`` the data side; ``t`` has shape ``[B]``;
losses are per-example terms in nats; bits/dim via :func:`ndm.likelihood.bits_per_dim`.
"""

from ndm.autoencoder import Autoencoder
from ndm.decoders import CategoricalDecoder, GaussianDecoder
from ndm.export import export_run, load_pretrained
from ndm.latent import LatentNDM
from ndm.likelihood import (
    bits_per_dim,
    continuous_nelbo,
    dequantisation_offset,
    discrete_nelbo,
    ode_nll,
)
from ndm.model import NDM
from ndm.nets.mlp import TimeMLP
from ndm.objectives import (
    LossTerms,
    continuous_nelbo_terms,
    discrete_nelbo_terms,
    simple_noise_loss,
)
from ndm.predictors import Predictor
from ndm.process import NeuralDiffusion
from ndm.samplers import SAMPLERS, get_sampler, time_grid
from ndm.schedules import (
    CosineSchedule,
    FlowMatchingOTSchedule,
    LearnedVPSchedule,
    LinearVPSchedule,
    LogSNRLinearSchedule,
    TableVPSchedule,
    make_schedule,
)
from ndm.special_cases import (
    SPECIAL_CASES,
    SpecialCase,
    special_case_config,
    special_case_flags,
)
from ndm.training import load_run, train
from ndm.transforms import (
    AffineTransform,
    IdentityTransform,
    LearnedTransform,
    SeparableTransform,
    Transform,
)

__all__ = [
    "NDM",
    "SAMPLERS",
    "SPECIAL_CASES",
    "AffineTransform",
    "Autoencoder",
    "CategoricalDecoder",
    "CosineSchedule",
    "FlowMatchingOTSchedule",
    "GaussianDecoder",
    "IdentityTransform",
    "LearnedTransform",
    "LatentNDM",
    "LearnedVPSchedule",
    "LinearVPSchedule",
    "LogSNRLinearSchedule",
    "TableVPSchedule",
    "LossTerms",
    "NeuralDiffusion",
    "Predictor",
    "SpecialCase",
    "TimeMLP",
    "SeparableTransform",
    "Transform",
    "bits_per_dim",
    "continuous_nelbo",
    "continuous_nelbo_terms",
    "dequantisation_offset",
    "discrete_nelbo",
    "discrete_nelbo_terms",
    "export_run",
    "get_sampler",
    "load_pretrained",
    "load_run",
    "make_schedule",
    "ode_nll",
    "simple_noise_loss",
    "special_case_config",
    "special_case_flags",
    "time_grid",
    "train",
]
