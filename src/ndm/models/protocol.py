"""The one protocol every model meets, so that evaluation, sampling and the run machinery
treat pixel and latent NDMs alike."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ndm.sampling.samplers import SampleResult


@runtime_checkable
class DiffusionModel(Protocol):
    """A trained model as evaluation sees it (:class:`~ndm.models.ndm.NDM`,
    :class:`~ndm.models.latent.LatentNDM`).

    - :meth:`likelihood_input` maps a test batch (points ``[B, D]``, or integer image levels
      ``[B, C, H, W]``) to the continuous ``x`` the bounds are of;
    - :attr:`bits_offset` is what bits/dim of that ``x`` add to bound the data (the
      dequantisation offset ``log2(L / 2)`` of a pixel image model, else 0);
    - :meth:`nll` and :meth:`nelbo` bound ``-log p(x)`` per example ``[B]`` in nats;
    - :meth:`evaluation_info` holds what a report adds about the model.
    """

    def likelihood_input(self, batch: Tensor, generator: torch.Generator | None) -> Tensor: ...

    @property
    def bits_offset(self) -> float: ...

    def nll(
        self, x: Tensor, generator: torch.Generator | None = None, **options: Any
    ) -> tuple[Tensor, int]: ...

    def nelbo(
        self,
        x: Tensor,
        num_time_samples: int = 64,
        generator: torch.Generator | None = None,
        num_terms: int | None = None,
    ) -> Any: ...

    def sample(
        self,
        shape: tuple[int, ...],
        sampler: str = "ode",
        steps: int = 100,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> SampleResult: ...

    def evaluation_info(self) -> dict[str, Any]: ...
