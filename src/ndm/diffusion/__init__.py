"""The diffusion core: schedules ``alpha_t, sigma_t``, transforms ``F_phi(x, t)``, the forward
process they make, the predictor ``x_theta(z_t, t)`` and the decoders ``p(x | z_0)``.

Conventions, stated once: ``t`` in ``[0, 1]`` with ``t = 0`` the data side; ``t`` is a tensor
of shape ``[B]``, broadcast against an example by :func:`~ndm.diffusion.transforms.per_example`.
"""

from ndm.diffusion.decoders import CategoricalDecoder, Decoder, GaussianDecoder
from ndm.diffusion.predictors import Prediction, Predictor
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import Schedule, ScheduleValues, make_schedule
from ndm.diffusion.transforms import Transform, per_example

__all__ = [
    "CategoricalDecoder",
    "Decoder",
    "GaussianDecoder",
    "NeuralDiffusion",
    "Prediction",
    "Predictor",
    "Schedule",
    "ScheduleValues",
    "Transform",
    "make_schedule",
    "per_example",
]
