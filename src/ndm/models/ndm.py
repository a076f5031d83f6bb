"""``NDM``: a process, a predictor and a choice of objective in one ``nn.Module``.

A thin convenience over the functions of :mod:`ndm.losses.objectives`, :mod:`ndm.sampling.samplers` and
:mod:`ndm.losses.likelihood`; everything it does can be done with them directly.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from ndm.data.images import dequantise
from ndm.data.images import quantise as quantise_levels
from ndm.diffusion.decoders import Decoder, GaussianDecoder
from ndm.diffusion.flow import FlowDiffusion, ForwardProcess
from ndm.diffusion.predictors import Predictor
from ndm.diffusion.timesampling import DEFAULT_TIME_SAMPLING, TIME_SAMPLINGS
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
    curvature_penalty,
    discrete_nelbo_terms,
    kinetic_energy_penalty,
    simple_noise_loss,
    straightness_penalty,
    velocity_matching_loss,
)
from ndm.sampling.samplers import SampleResult, get_sampler, time_grid

OBJECTIVES = ("continuous", "discrete", "simple", "velocity")
#: The objectives that are a bound on the likelihood.
NELBO_OBJECTIVES = ("continuous", "discrete")
#: The objectives an NFDM process trains with.
FLOW_OBJECTIVES = ("continuous", "velocity")


class NDM(nn.Module):
    """Neural Diffusion Model, or with a :class:`~ndm.diffusion.flow.FlowDiffusion` process
    a Neural Flow Diffusion Model (NFDM).

    ``objective``: ``"continuous"`` (eq. 11, time drawn by ``time_sampling``), ``"discrete"``
    (eq. 9-10 with ``num_steps`` steps), ``"simple"`` (noise loss, fixed transforms only) or
    ``"velocity"`` (the deterministic reverse process's, ``g = 0``: the probability-flow
    velocities matched, :func:`ndm.losses.objectives.velocity_matching_loss`; not a bound);
    an NFDM trains with ``"continuous"`` or ``"velocity"``.
    ``kinetic_weight`` ``lambda >= 0`` adds ``lambda E_t ||v(z_t, t)||^2``, the kinetic energy
    of the probability-flow velocity (:func:`ndm.losses.objectives.kinetic_energy_penalty`), to the
    training loss, ``curvature_weight`` likewise the squared acceleration of the paths the
    ODE generates (:func:`ndm.losses.objectives.curvature_penalty`; NFDM-OT's penalty), and
    ``straightness_weight`` that of the forward process's conditional paths
    (:func:`ndm.losses.objectives.straightness_penalty`); the NELBO terms and :meth:`nelbo`
    include none of them. ``num_levels``
    (``L``, images only) makes it a model of ``L``-level images in ``[-1, 1]``: data outside
    that range is refused, samples are quantised to the levels' bin centres, and
    :meth:`image_bits_per_dim` scores integer levels. The methods taking data refuse a batch
    that is empty or not floating point.
    """

    def __init__(
        self,
        process: ForwardProcess,
        predictor: Predictor,
        objective: str = "continuous",
        num_steps: int = 1000,
        time_sampling: str = DEFAULT_TIME_SAMPLING,
        decoder: Decoder | None = None,
        kinetic_weight: float = 0.0,
        num_levels: int | None = None,
        straightness_weight: float = 0.0,
        curvature_weight: float = 0.0,
    ):
        super().__init__()
        weights = {
            "kinetic": kinetic_weight,
            "curvature": curvature_weight,
            "straightness": straightness_weight,
        }
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"{name}_weight must be non-negative, got {weight}")
        if isinstance(process, FlowDiffusion) and objective not in FLOW_OBJECTIVES:
            raise ValueError(
                "an NFDM process trains with objective "
                f"{' or '.join(map(repr, FLOW_OBJECTIVES))}, not {objective!r}"
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"unknown time sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}"
            )
        if objective == "simple" and process.transform.is_learned:
            raise ValueError(
                "the simple noise loss collapses a learned transform to 0; "
                "use objective='continuous' or 'discrete' with a learned F"
            )
        self.process, self.predictor = process, predictor
        self.objective, self.num_steps, self.time_sampling = objective, num_steps, time_sampling
        self.decoder = decoder or GaussianDecoder()
        self.kinetic_weight, self.straightness_weight = kinetic_weight, straightness_weight
        self.curvature_weight = curvature_weight
        self.num_levels = num_levels

    def with_num_steps(self, num_steps: int) -> NDM:
        """The same model (shared modules) with a discrete objective of ``num_steps`` steps:
        its NELBO on another grid."""
        return NDM(
            self.process,
            self.predictor,
            "discrete",
            num_steps,
            self.time_sampling,
            self.decoder,
            self.kinetic_weight,
            self.num_levels,
            self.straightness_weight,
            self.curvature_weight,
        )

    def check_data(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a non-empty floating batch ``[B, ...]``, within
        ``[-1, 1]`` for an image model."""
        if not isinstance(x, Tensor):
            raise TypeError(f"data must be a tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"data must be a non-empty batch [B, ...], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"data must be floating point, got {x.dtype}")
        if self.num_levels is not None:
            largest = float(x.detach().abs().max())
            if not largest <= 1.0:
                raise ValueError(
                    "image data lie in [-1, 1] (ndm.data.images.to_model_space or dequantise "
                    f"of the levels; image_bits_per_dim takes the levels), got |x| up to "
                    f"{largest:g}"
                )

    def image_bits_per_dim(
        self, levels: Tensor, generator: torch.Generator | None = None, **nll_options: object
    ) -> dict[str, Tensor]:
        """Bits/dim ``[B]`` of integer image levels ``[B, C, H, W]`` in ``0..L-1``: ``nll``
        (the probability-flow ODE, ``nll_options`` as :meth:`nll`) and ``nelbo`` (:meth:`nelbo`)
        of the levels uniformly dequantised with noise from ``generator``, plus ``log2(L / 2)``:
        both bound ``-log2 P(levels)`` per dimension."""
        if self.num_levels is None:
            raise ValueError("image_bits_per_dim needs an image model (num_levels)")
        if (
            levels.is_floating_point()
            or int(levels.min()) < 0
            or int(levels.max()) >= self.num_levels
        ):
            raise ValueError(f"levels must be integers in 0..{self.num_levels - 1}")
        x = dequantise(levels, self.num_levels, generator).to(next(self.parameters()).dtype)
        dims, offset = x[0].numel(), dequantisation_offset(self.num_levels)
        nll, _ = self.nll(x, generator=generator, **nll_options)
        nelbo = self.nelbo(x, generator=generator).total
        return {name: bits_per_dim(value, dims, offset) for name, value in
                (("nll", nll), ("nelbo", nelbo))}  # fmt: skip

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training losses per example ``[B]`` (what DDP wraps): the optimised ``loss``; for
        the NELBO objectives the ``nelbo`` estimate and its ``prior``, ``diffusion`` and
        ``reconstruction`` terms, for the velocity objective its ``velocity`` loss; with a
        kinetic (curvature, straightness) weight the ``kinetic`` (``curvature``,
        ``straightness``) penalty before weighting, so that ``loss = nelbo + kinetic_weight *
        kinetic + curvature_weight * curvature + straightness_weight * straightness``
        (``loss = nelbo`` without them). The penalties draw their times and noise from
        ``generator`` after the objective's draws, in that order."""
        self.check_data(x)
        if self.objective == "simple":
            losses = {"loss": simple_noise_loss(self.process, self.predictor, x, generator)}
        elif self.objective == "velocity":
            velocity = velocity_matching_loss(
                self.process, self.predictor, x, self.time_sampling, generator
            )
            losses = {"loss": velocity, "velocity": velocity}
        else:
            terms = self.loss_terms(x, generator).as_dict()
            losses = {"loss": terms["total"], "nelbo": terms.pop("total")} | terms
        if self.kinetic_weight > 0:
            kinetic = kinetic_energy_penalty(self.process, self.predictor, x, generator)
            losses["loss"] = losses["loss"] + self.kinetic_weight * kinetic
            losses["kinetic"] = kinetic
        if self.curvature_weight > 0:
            curvature = curvature_penalty(self.process, self.predictor, x, generator)
            losses["loss"] = losses["loss"] + self.curvature_weight * curvature
            losses["curvature"] = curvature
        if self.straightness_weight > 0:
            straightness = straightness_penalty(self.process, x, generator)
            losses["loss"] = losses["loss"] + self.straightness_weight * straightness
            losses["straightness"] = straightness
        return losses

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-example training loss ``[B]``: the NELBO estimate, the simple noise loss or the
        velocity loss, plus the weighted penalties."""
        return self(x, generator)["loss"]

    def loss_terms(self, x: Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """One-sample NELBO estimate, named terms in nats per example."""
        self.check_data(x)
        if self.objective == "discrete":
            return discrete_nelbo_terms(
                self.process, self.predictor, x, self.num_steps, self.decoder, generator
            )
        return continuous_nelbo_terms(
            self.process, self.predictor, x, self.time_sampling, self.decoder, generator
        )

    def sample(
        self,
        shape: tuple[int, ...],
        sampler: str = "ode",
        steps: int = 100,
        generator: torch.Generator | None = None,
        quantise: bool | None = None,
        **options: object,
    ) -> SampleResult:
        """Draw ``z_1 ~ N(0, I)`` of ``shape`` and run the named sampler on ``steps`` uniform
        steps. ``quantise`` (default: for an image model) rounds the sample to the bin
        centres of the levels in ``[-1, 1]``."""
        param = next(self.parameters())
        z = torch.randn(shape, generator=generator, dtype=param.dtype, device=param.device)
        grid = time_grid(steps, dtype=param.dtype).to(param.device)
        result = get_sampler(sampler)(
            self.process, self.predictor, z, grid, generator=generator, **options
        )
        if quantise is None:
            quantise = self.num_levels is not None
        if not quantise:
            return result
        if self.num_levels is None:
            raise ValueError("quantise needs an image model (num_levels)")
        return replace(result, sample=quantise_levels(result.sample, self.num_levels))

    def nll(
        self, x: Tensor, generator: torch.Generator | None = None, **options: object
    ) -> tuple[Tensor, int]:
        """``(-log p(x) [B] in nats, nfe)`` along the ODE (see
        :func:`ndm.losses.likelihood.ode_nll`; ``generator`` draws Hutchinson's probes)."""
        self.check_data(x)
        return ode_nll(self.process, self.predictor, x, generator=generator, **options)

    def likelihood_input(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        """What the bounds are of: points ``[B, D]`` as they are, integer image levels
        ``[B, C, H, W]`` uniformly dequantised with noise from ``generator``; in the
        model's dtype and on its device."""
        param = next(self.parameters())
        x = batch if self.num_levels is None else dequantise(batch, self.num_levels, generator)
        return x.to(param.device, param.dtype)

    @property
    def bits_offset(self) -> float:
        """Bits/dim that bound discrete levels from the density of dequantised images,
        ``log2(L / 2)``; 0 for points."""
        return 0.0 if self.num_levels is None else dequantisation_offset(self.num_levels)

    def evaluation_info(self) -> dict[str, object]:
        """Nothing beyond the metrics: an NDM's bounds are of the data themselves."""
        return {}

    def nelbo(
        self,
        x: Tensor,
        num_time_samples: int = 64,
        generator: torch.Generator | None = None,
        num_terms: int | None = None,
    ) -> LossTerms:
        """NELBO terms: the sum over all steps (discrete; or its stratified estimate from
        ``num_terms`` of them) or Monte Carlo over time with ``num_time_samples`` draws
        (continuous, simple and velocity objectives). A model trained with the velocity
        objective (``g = 0``) has no bound of its own: this is the bound of its SDE sampler,
        with the process's volatility, on the same ``x_hat``, estimated with the default
        ``p(t)`` (uniform in ``gamma``) rather than the velocity loss's: the bound's
        integrand peaks where ``sigma_t`` is small, which a uniform ``t`` rarely draws."""
        self.check_data(x)
        if num_time_samples < 1:
            raise ValueError(f"num_time_samples must be positive, got {num_time_samples}")
        if num_terms is not None and not 1 <= num_terms <= self.num_steps:
            raise ValueError(f"num_terms must lie in 1..{self.num_steps}, got {num_terms}")
        if self.objective == "discrete":
            return discrete_nelbo(
                self.process,
                self.predictor,
                x,
                self.num_steps,
                self.decoder,
                generator,
                num_terms,
            )
        time_sampling = (
            DEFAULT_TIME_SAMPLING if self.objective == "velocity" else self.time_sampling
        )
        return continuous_nelbo(
            self.process,
            self.predictor,
            x,
            num_time_samples,
            time_sampling,
            self.decoder,
            generator,
        )
