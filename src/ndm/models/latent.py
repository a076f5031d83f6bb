"""Latent NDM: an NDM over the latents ``y`` of an autoencoder (the paper's Table 3, NDM in LSGM).

With the encoder ``q(y | x) = N(mu(x), diag s(x)^2)``, the decoder ``p(x | y)`` over the data's
levels (:mod:`ndm.models.autoencoder`) and an NDM prior ``p(y)`` on continuous latents, the bound in
nats per example is::

    -log P(x) <= E_{q(y|x)}[ -log p(x | y) ] - H[q(y | x)] + E_{q(y|x)}[ NELBO_NDM(y) ],

estimated with one reparameterised draw ``y = mu + s eps`` and the closed-form entropy
``H[q] = sum_d (log s_d + 1/2 log(2 pi e))`` (``E_q[log q(y | x)] = -H[q]``). The NDM's own
reconstruction term is the Gaussian decoder of continuous data. ``p(x | y)`` is a normalised
distribution over the levels, so the bound is one on the discrete ``-log P(x)``: in bits/dim
it is divided by ``D_x ln 2`` with ``D_x`` the data's dimension, and needs no dequantisation
offset (as the NELBO of pixel runs). Replacing ``NELBO_NDM(y)`` by the probability-flow ODE's
``-log p(y)`` gives the bound reported as the NLL.

Training (``mode``), with ``autoencoder_steps`` first steps of stage ``"autoencoder"``: a VAE
with a standard normal prior, ``-log p(x | y) + KL(q(y | x) || N(0, I))`` (closed-form KL); then
stage ``"diffusion"``:

- ``"two_stage"``: the autoencoder is frozen; the loss is the bound, whose gradient reaches
  only the NDM (the encoder's draw is computed without gradient);
- ``"end_to_end"``: the bound trains every parameter (as LSGM).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ndm.data.images import to_model_space
from ndm.losses.objectives import LossTerms
from ndm.models.autoencoder import Autoencoder, gaussian_entropy, standard_normal_cross_entropy
from ndm.models.ndm import NDM, NELBO_OBJECTIVES
from ndm.sampling.samplers import SampleResult

LATENT_MODES = ("two_stage", "end_to_end")
STAGES = ("autoencoder", "diffusion")


def stage_at(step: int, autoencoder_steps: int) -> str:
    """The training stage of (1-based) ``step``: ``"autoencoder"`` for the first
    ``autoencoder_steps`` steps, ``"diffusion"`` after."""
    return "autoencoder" if step <= autoencoder_steps else "diffusion"


@dataclass(frozen=True)
class LatentTerms:
    """Per-example terms of the latent bound in nats, each ``[B]``.

    ``decoder``: ``-log p(x | y)``; ``encoder``: ``-H[q(y | x)]``; ``latent``: the prior's
    terms of ``y`` (the NDM's ``prior``, ``diffusion``, ``reconstruction``; in stage
    ``"autoencoder"`` ``prior`` is ``E_q[-log N(y; 0, I)]`` and the other two are 0).
    """

    decoder: Tensor
    encoder: Tensor
    latent: LossTerms

    @property
    def total(self) -> Tensor:
        """``decoder + encoder + latent.total``, ``[B]``."""
        return self.decoder + self.encoder + self.latent.total

    def as_dict(self) -> dict[str, Tensor]:
        latent = {k: v for k, v in self.latent.as_dict().items() if k != "total"}
        return {"decoder": self.decoder, "encoder": self.encoder} | latent | {"total": self.total}


class LatentNDM(nn.Module):
    """An :class:`~ndm.models.autoencoder.Autoencoder` of images ``image_shape = (C, H, W)`` and an
    :class:`~ndm.models.ndm.NDM` on its latents of ``latent_shape = (c, h, w)``.

    ``stage`` (one of :data:`STAGES`, set by the training loop) selects the training loss of
    :meth:`forward`; the evaluation methods always use the full bound.
    """

    def __init__(
        self,
        autoencoder: Autoencoder,
        ndm: NDM,
        image_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        mode: str = "end_to_end",
    ):
        super().__init__()
        if mode not in LATENT_MODES:
            raise ValueError(f"unknown latent mode {mode!r}; choose one of {LATENT_MODES}")
        if ndm.objective not in NELBO_OBJECTIVES:
            raise ValueError(
                f"a latent NDM needs a NELBO objective, 'continuous' or 'discrete', not "
                f"{ndm.objective!r}"
            )
        self.autoencoder, self.ndm, self.mode = autoencoder, ndm, mode
        self.image_shape, self.latent_shape = tuple(image_shape), tuple(latent_shape)
        self.stage = "diffusion"

    def _bound(
        self,
        x: Tensor,
        generator: torch.Generator | None,
        latent_terms: Callable[[Tensor], LossTerms],
        freeze_autoencoder: bool,
    ) -> LatentTerms:
        """The bound's terms with ``latent_terms(y)`` for the prior's part."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_autoencoder):
            y, _, log_std = self.autoencoder.encode(x, generator)
            decoder = self.autoencoder.decoder_nll(x, y)
            encoder = -gaussian_entropy(log_std)
        return LatentTerms(decoder, encoder, latent_terms(y))

    def bound_terms(self, x: Tensor, generator: torch.Generator | None = None) -> LatentTerms:
        """One-sample training estimate of the loss of the current ``stage``, ``x [B, C, H, W]``
        in ``[-1, 1]``: the VAE bound (stage ``"autoencoder"``) or the latent bound with the
        NDM's training estimate (``loss_terms``) of ``NELBO_NDM(y)``."""
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {STAGES}")
        if self.stage == "autoencoder":
            y, mean, log_std = self.autoencoder.encode(x, generator)
            zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            prior = standard_normal_cross_entropy(mean, log_std)
            return LatentTerms(
                self.autoencoder.decoder_nll(x, y),
                -gaussian_entropy(log_std),
                LossTerms(prior, zero, zero),
            )
        return self._bound(
            x,
            generator,
            lambda y: self.ndm.loss_terms(y, generator),
            freeze_autoencoder=self.mode == "two_stage",
        )

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training loss ``loss``, the bound itself (``nelbo``, equal to ``loss``) and its
        terms (:class:`LatentTerms`), each ``[B]``."""
        terms = self.bound_terms(x, generator).as_dict()
        return {"loss": terms["total"], "nelbo": terms.pop("total")} | terms

    @torch.no_grad()
    def nelbo(
        self,
        x: Tensor,
        num_time_samples: int = 64,
        generator: torch.Generator | None = None,
        num_terms: int | None = None,
    ) -> LatentTerms:
        """The bound with the NDM's evaluation NELBO of ``y`` (:meth:`ndm.models.ndm.NDM.nelbo`)."""
        return self._bound(
            x,
            generator,
            lambda y: self.ndm.nelbo(y, num_time_samples, generator, num_terms),
            freeze_autoencoder=True,
        )

    def nll(
        self, x: Tensor, generator: torch.Generator | None = None, **options: object
    ) -> tuple[Tensor, int]:
        """``(bound [B] in nats, nfe)`` with the ODE's ``-log p(y)`` of the NDM
        (:meth:`ndm.models.ndm.NDM.nll`, ``options`` passed on) for the prior's part."""
        nfe = 0

        def ode_terms(y: Tensor) -> LossTerms:
            nonlocal nfe
            nll, nfe = self.ndm.nll(y, generator=generator, **options)
            zero = torch.zeros_like(nll)
            return LossTerms(nll.detach(), zero, zero)

        with torch.no_grad():
            terms = self._bound(x, generator, ode_terms, freeze_autoencoder=True)
        return terms.total, nfe

    def likelihood_input(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        """Integer image levels ``[B, C, H, W]`` at their bin centres in ``[-1, 1]``, in the
        model's dtype and on its device (the decoder is a distribution over the levels, so
        nothing is dequantised; ``generator`` is not used)."""
        param = next(self.parameters())
        return to_model_space(batch, self.autoencoder.num_levels).to(param.device, param.dtype)

    @property
    def bits_offset(self) -> float:
        """0: ``p(x | y)`` is a distribution over the levels themselves."""
        return 0.0

    def evaluation_info(self) -> dict[str, object]:
        """``latent_dims``: the dimension of the latents the NDM models."""
        return {"latent_dims": math.prod(self.latent_shape)}

    @torch.no_grad()
    def sample(
        self,
        shape: tuple[int, ...],
        sampler: str = "ode",
        steps: int = 100,
        generator: torch.Generator | None = None,
        **options: object,
    ) -> SampleResult:
        """``shape = (B, C, H, W)`` images: latents ``y`` from the NDM's named sampler (the
        mean ``z_0 / alpha_0`` of its Gaussian decoder), decoded to the mode of ``p(x | y)``
        at the levels' bin centres in ``[-1, 1]``."""
        if tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"this latent NDM draws images of shape {self.image_shape}, not {tuple(shape[1:])}"
            )
        latent = self.ndm.sample(
            (shape[0], *self.latent_shape), sampler, steps, generator, **options
        )
        return SampleResult(self.autoencoder.decode_mode(latent.sample), latent.nfe)
