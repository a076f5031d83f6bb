"""Build an :class:`~ndm.model.NDM` from a :class:`~ndm.config.ModelConfig`."""

from __future__ import annotations

from ndm.config import ModelConfig
from ndm.model import NDM
from ndm.nets.mlp import TimeMLP
from ndm.predictors import Predictor
from ndm.process import NeuralDiffusion
from ndm.schedules import make_schedule
from ndm.transforms import IdentityTransform, LearnedTransform, Transform


def build_transform(cfg: ModelConfig, dim: int) -> Transform:
    """``"learned"``: ``F = x + t NN(x, t)`` with the network's output layer at zero, so the
    process starts as DDPM's; ``"identity"``: ``F = x`` (the DDPM baseline)."""
    if cfg.transform == "learned":
        return LearnedTransform(TimeMLP(dim, cfg.hidden, cfg.depth, zero_init_output=True))
    return IdentityTransform()


def build_model(cfg: ModelConfig, dim: int) -> NDM:
    """An NDM on ``dim``-dimensional data; predictor and transform networks are both
    ``TimeMLP(dim, cfg.hidden, cfg.depth)`` and share one schedule."""
    schedule = make_schedule(cfg.schedule)
    predictor = Predictor(TimeMLP(dim, cfg.hidden, cfg.depth), schedule, cfg.parameterisation)
    return NDM(
        NeuralDiffusion(schedule, build_transform(cfg, dim)),
        predictor,
        objective=cfg.objective,
        num_steps=cfg.num_steps,
        time_sampling=cfg.time_sampling,
    )
