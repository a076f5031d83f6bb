"""Build an :class:`~ndm.models.ndm.NDM` from a :class:`~ndm.runs.config.ModelConfig` and the data's shape,
or a :class:`~ndm.models.latent.LatentNDM` from a whole :class:`~ndm.runs.config.RunConfig`."""

from __future__ import annotations

import torch
from torch import nn

from ndm.diffusion.blur import BlurTransform
from ndm.diffusion.flow import (
    FlowDiffusion,
    ForwardProcess,
    LearnedVolatility,
    MeanScaleTransform,
    ScheduleVolatility,
)
from ndm.diffusion.predictors import Predictor
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import Schedule, make_schedule
from ndm.diffusion.transforms import (
    IdentityTransform,
    LearnedTransform,
    SeparableTransform,
    Transform,
)
from ndm.models.autoencoder import Autoencoder
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM
from ndm.nets.checkpointing import set_checkpointing
from ndm.nets.mlp import TimeMLP
from ndm.nets.unet import build_unet
from ndm.runs.config import LatentConfig, ModelConfig, RunConfig

# 4: the 4x4 latents of 8x8 images.
CPU_UNET_BY_SIDE = {4: "cpu8", 8: "cpu8", 16: "cpu16", 28: "cpu28"}


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


def build_network(
    cfg: ModelConfig,
    shape: tuple[int, ...],
    zero_init_output: bool,
    outputs: int = 1,
    time_scale: float = 1000.0,
    width: float = 1.0,
) -> nn.Module:
    """``net(x [B, *shape], t [B]) -> [B, outputs * shape[0], *shape[1:]]``: a ``TimeMLP`` or
    a U-Net preset, whose sinusoidal time embedding sees ``time_scale * t``, at ``width``
    times the configured width (the MLP's hidden units, the U-Net's channels)."""
    name = architecture_for(cfg, shape)
    if name == "mlp":
        if len(shape) != 1:
            raise ValueError(f"the MLP takes points [B, D], not examples of shape {shape}")
        return TimeMLP(
            shape[0],
            max(1, round(cfg.hidden * width)),
            cfg.depth,
            zero_init_output=zero_init_output,
            out_dim=outputs * shape[0],
            time_scale=time_scale,
        )
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"a U-Net takes square images [B, C, H, H], not examples of shape {shape}")
    channels = outputs * shape[0]
    return build_unet(name, shape[0], shape[2], zero_init_output, channels, time_scale, width)


def _scaled_output_layer(network: nn.Module, scale: float) -> nn.Module:
    """``network`` (a ``TimeMLP`` or a U-Net, whose last layer is ``out[-1]``) with that
    layer's weights and bias multiplied by ``scale``."""
    with torch.no_grad():
        for param in network.out[-1].parameters():
            param.mul_(scale)
    return network


def build_transform(cfg: ModelConfig, shape: tuple[int, ...]) -> Transform:
    """The transform, its network (if any) at ``transform_width`` times the predictor's width.
    ``"learned"``: ``F = x + t NN(x, t)`` (or ``(1 - t) x + t NN(x, t)``, ``transform_form``)
    with the network's output layer at zero, so the residual form starts as DDPM's (or at
    ``transform_init_scale`` times its default init); ``"separable"``: ``F = x + t sum_k P_k(2t - 1) G_k(x)``, likewise
    zero at start; ``"identity"``: ``F = x`` (the DDPM baseline); ``"blur"``: the fixed
    blurring transform of soft / blurring diffusion."""
    if cfg.transform == "learned":
        scale = cfg.transform_init_scale
        network = build_network(
            cfg,
            shape,
            zero_init_output=scale == 0,
            time_scale=cfg.transform_network_time_scale,
            width=cfg.transform_width,
        )
        if scale:
            network = _scaled_output_layer(network, scale)
        return LearnedTransform(network, cfg.transform_derivative, cfg.transform_form)
    if cfg.transform == "separable":
        network = build_network(
            cfg,
            shape,
            True,
            outputs=cfg.transform_basis,
            time_scale=cfg.network_time_scale,
            width=cfg.transform_width,
        )
        return SeparableTransform(network, cfg.transform_basis)
    if cfg.transform == "blur":
        if len(shape) != 3:
            raise ValueError(f"the blur transform takes images [C, H, W], not shape {shape}")
        return BlurTransform(shape[1], shape[2])
    return IdentityTransform()


def build_flow_process(
    cfg: ModelConfig, shape: tuple[int, ...], schedule: Schedule
) -> FlowDiffusion:
    """An NFDM process around ``schedule``: the mean and scale from one network of F's
    settings (width, time scale, derivative) with twice the outputs and its output layer
    at zero, so that it starts as the schedule's process with ``F = x``, and the volatility
    learned from the schedule's by the continuous objective, else (the velocity objective
    does not see it; the SDE sampler and the reported bound use it) the schedule's."""
    network = build_network(
        cfg,
        shape,
        zero_init_output=True,
        outputs=2,
        time_scale=cfg.transform_network_time_scale,
        width=cfg.transform_width,
    )
    transform = MeanScaleTransform(network, schedule, cfg.transform_derivative)
    volatility = (
        LearnedVolatility(schedule)
        if cfg.training_objective == "continuous"
        else ScheduleVolatility(schedule)
    )
    return FlowDiffusion(transform, volatility, schedule)


def build_model(cfg: ModelConfig, shape: tuple[int, ...], num_levels: int | None = None) -> NDM:
    """An NDM (or NFDM, ``cfg.process``) on continuous examples of ``shape`` (points, or
    dequantised images with ``num_levels`` levels) with the Gaussian decoder: predictor and
    transform networks share one architecture and one schedule; with a learned reverse
    variance the predictor's network has twice the outputs."""
    schedule = make_schedule(cfg.schedule, learn_endpoints=cfg.schedule_endpoints == "learned")
    variance = cfg.learns_variance
    outputs = 2 if variance else 1
    network = build_network(cfg, shape, False, outputs, cfg.network_time_scale)
    process: ForwardProcess = (
        NeuralDiffusion(schedule, build_transform(cfg, shape))
        if cfg.process == "ndm"
        else build_flow_process(cfg, shape, schedule)
    )
    return NDM(
        process,
        Predictor(network, schedule, cfg.parameterisation, variance),
        objective=cfg.training_objective,
        num_steps=cfg.num_steps,
        time_sampling=cfg.time_sampling,
        kinetic_weight=cfg.kinetic_weight,
        num_levels=num_levels,
        straightness_weight=cfg.straightness_weight,
        curvature_weight=cfg.curvature,
    )


def build_latent_model(
    model_cfg: ModelConfig, latent_cfg: LatentConfig, shape: tuple[int, ...], num_levels: int
) -> LatentNDM:
    """A latent NDM on images of ``shape = (C, H, W)`` with ``num_levels`` levels: the
    convolutional autoencoder of ``latent_cfg`` and an NDM of ``model_cfg`` on its latents
    ``(c, H / 2^k, W / 2^k)`` with the Gaussian decoder of continuous data."""
    if len(shape) != 3:
        raise ValueError(f"a latent NDM encodes images [C, H, W], not examples of shape {shape}")
    autoencoder = Autoencoder.build(
        shape,
        latent_cfg.latent_channels,
        latent_cfg.latent_downsample,
        latent_cfg.latent_hidden,
        num_levels,
    )
    factor = 2**latent_cfg.latent_downsample
    latent_shape = (latent_cfg.latent_channels, shape[1] // factor, shape[2] // factor)
    ndm = build_model(model_cfg, latent_shape)
    return LatentNDM(autoencoder, ndm, shape, latent_shape, latent_cfg.latent_mode)


def build_run_model(
    cfg: RunConfig, shape: tuple[int, ...], num_levels: int | None = None
) -> NDM | LatentNDM:
    """The model of a run: a latent NDM when ``cfg.latent`` asks for one, else an NDM (of
    points, or of images dequantised to a continuous density), with the activation
    checkpointing of ``cfg.train.checkpointing``."""
    if cfg.latent.enabled:
        if num_levels is None:
            raise ValueError("a latent NDM needs discrete images (num_levels)")
        model = build_latent_model(cfg.model, cfg.latent, shape, num_levels)
        ndm = model.ndm
    else:
        model = ndm = build_model(cfg.model, shape, num_levels)
    apply_checkpointing(ndm, cfg.train.checkpointing)
    return model


def mlp_weights(cfg: ModelConfig) -> int:
    """About how many weights the MLPs of ``cfg`` hold: ``depth * hidden^2`` in the hidden
    layers of the predictor's, and of a learned or separable transform's."""
    networks = 2 if cfg.transform in ("learned", "separable") else 1
    return networks * cfg.depth * cfg.hidden**2


def apply_checkpointing(model: NDM, what: str) -> None:
    """Make ``model``'s networks checkpoint as ``what`` (one of
    :data:`~ndm.nets.checkpointing.CHECKPOINTING`) asks."""
    if what == "transform":
        set_checkpointing(model.process.transform, "blocks")
    elif what != "none":
        set_checkpointing(model, "calls" if what == "all_calls" else "blocks")
