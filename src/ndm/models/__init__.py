"""Models: :class:`NDM` (a process, a predictor and an objective in one module), the latent
NDM over an autoencoder's latents, and the protocol both meet."""

from ndm.models.autoencoder import Autoencoder
from ndm.models.latent import LatentNDM
from ndm.models.ndm import NDM

__all__ = ["NDM", "Autoencoder", "LatentNDM"]
