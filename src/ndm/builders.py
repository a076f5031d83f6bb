"""Build an :class:`~ndm.model.NDM` from a :class:`~ndm.config.ModelConfig` and the data's shape."""

from __future__ import annotations

from torch import nn

from ndm.blur import BlurTransform
from ndm.config import ModelConfig
from ndm.decoders import CategoricalDecoder, GaussianDecoder
from ndm.model import NDM
from ndm.nets.mlp import TimeMLP
from ndm.nets.unet import build_unet
from ndm.predictors import Predictor
from ndm.process import NeuralDiffusion
from ndm.schedules import make_schedule
from ndm.transforms import IdentityTransform, LearnedTransform, Transform

CPU_UNET_BY_SIDE = {8: "cpu8", 16: "cpu16", 28: "cpu28"}


def architecture_for(cfg: ModelConfig, shape: tuple[int, ...]) -> str:
    """The network preset: ``cfg.architecture``, or for ``"auto"`` the MLP for points
    ``(D,)`` and the CPU U-Net preset of the image side (8, 16 or 28) for ``(C, H, W)``."""
    if cfg.architecture != "auto":
        return cfg.architecture
    if len(shape) == 1:
        return "mlp"
    side = shape[-1]
    if side not in CPU_UNET_BY_SIDE:
        raise ValueError(
            f"no CPU U-Net preset for {side}x{side} images (have {sorted(CPU_UNET_BY_SIDE)}); "
            "choose --architecture"
        )
    return CPU_UNET_BY_SIDE[side]


def build_network(cfg: ModelConfig, shape: tuple[int, ...], zero_init_output: bool) -> nn.Module:
    """``net(x [B, *shape], t [B]) -> [B, *shape]``: a ``TimeMLP`` or a U-Net preset."""
    name = architecture_for(cfg, shape)
    if name == "mlp":
        if len(shape) != 1:
            raise ValueError(f"the MLP takes points [B, D], not examples of shape {shape}")
        return TimeMLP(shape[0], cfg.hidden, cfg.depth, zero_init_output=zero_init_output)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"a U-Net takes square images [B, C, H, H], not examples of shape {shape}")
    return build_unet(name, shape[0], shape[2], zero_init_output=zero_init_output)


def build_transform(cfg: ModelConfig, shape: tuple[int, ...]) -> Transform:
    """``"learned"``: ``F = x + t NN(x, t)`` with the network's output layer at zero, so the
    process starts as DDPM's; ``"identity"``: ``F = x`` (the DDPM baseline); ``"blur"``:
    the fixed blurring transform of soft / blurring diffusion."""
    if cfg.transform == "learned":
        network = build_network(cfg, shape, zero_init_output=True)
        return LearnedTransform(network, cfg.transform_derivative)
    if cfg.transform == "blur":
        if len(shape) != 3:
            raise ValueError(f"the blur transform takes images [C, H, W], not shape {shape}")
        return BlurTransform(shape[1], shape[2])
    return IdentityTransform()


def build_model(cfg: ModelConfig, shape: tuple[int, ...], num_levels: int | None = None) -> NDM:
    """An NDM on examples of ``shape``: predictor and transform networks share one
    architecture and one schedule; ``num_levels`` selects the categorical decoder of
    discrete data (else the Gaussian decoder of continuous data)."""
    schedule = make_schedule(cfg.schedule)
    network = build_network(cfg, shape, zero_init_output=False)
    decoder = GaussianDecoder() if num_levels is None else CategoricalDecoder(num_levels)
    return NDM(
        NeuralDiffusion(schedule, build_transform(cfg, shape)),
        Predictor(network, schedule, cfg.parameterisation),
        objective=cfg.objective,
        num_steps=cfg.num_steps,
        time_sampling=cfg.time_sampling,
        decoder=decoder,
        kinetic_weight=cfg.kinetic_weight,
    )
