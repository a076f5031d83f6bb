"""Neural Diffusion Models: diffusion with a learned, time-dependent data transform ``F_phi(x, t)``.

Conventions: ``t`` in ``[0, 1]`` with ``t = 0`` the data side; ``t`` has shape ``[B]``;
losses are per-example terms in nats; bits/dim via :func:`ndm.losses.likelihood.bits_per_dim`.
"""

from ndm.diffusion.decoders import CategoricalDecoder, GaussianDecoder
from ndm.diffusion.flow import FlowDiffusion, LearnedVolatility, MeanScaleTransform
from ndm.diffusion.predictors import Predictor
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import (
    CosineSchedule,
    FlowMatchingOTSchedule,
    LearnedVPSchedule,
    LinearVPSchedule,
    LogSNRLinearSchedule,
    TableVPSchedule,
    make_schedule,
)
from ndm.diffusion.transforms import (
    AffineTransform,
    IdentityTransform,
    LearnedTransform,
    SeparableTransform,
    Transform,
)
from ndm.losses.likelihood import (
    bits_per_dim,
    continuous_nelbo,
    dequantisation_offset,
    discrete_nelbo,
    ode_nll,
)
from ndm.losses.objectives import (
    LossTerms,
    continuous_nelbo_terms,
    discrete_nelbo_terms,
    simple_noise_loss,
)
from ndm.models.autoencoder import Autoencoder
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.nets.mlp import TimeMLP
from ndm.runs.export import export_run, load_pretrained
from ndm.runs.folder import load_run
from ndm.runs.special_cases import (
    SPECIAL_CASES,
    SpecialCase,
    special_case_config,
    special_case_flags,
)
from ndm.runs.training import train
from ndm.sampling.samplers import SAMPLERS, get_sampler, time_grid

__all__ = [
    "NDM",
    "SAMPLERS",
    "SPECIAL_CASES",
    "AffineTransform",
    "Autoencoder",
    "CategoricalDecoder",
    "CosineSchedule",
    "FlowDiffusion",
    "FlowMatchingOTSchedule",
    "GaussianDecoder",
    "IdentityTransform",
    "LearnedTransform",
    "LearnedVolatility",
    "LatentNDM",
    "LearnedVPSchedule",
    "LinearVPSchedule",
    "LogSNRLinearSchedule",
    "TableVPSchedule",
    "LossTerms",
    "MeanScaleTransform",
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
