"""Run configuration: frozen dataclasses that hold every default of a training run.

A :class:`RunConfig` has five sections (``data``, ``model``, ``train``, ``eval``,
``latent``). Each field carries its help text, its valid choices or a range check in
``metadata``; the same metadata validates values on construction and generates the
command-line flags (:func:`add_config_arguments`). A flag is ``--field-name``, or
``--section-field-name`` when the field name occurs in more than one section
(``--data-seed``, ``--train-seed``).
"""

from __future__ import annotations

import argparse
import json
import math
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import torch

from ndm.data.loading import ALL_DATASETS, is_image_dataset
from ndm.diffusion.predictors import PARAMETERISATIONS
from ndm.diffusion.schedules import LEARNABLE_ENDPOINTS, SCHEDULES
from ndm.diffusion.timesampling import DEFAULT_TIME_SAMPLING, TIME_SAMPLINGS
from ndm.diffusion.transforms import DERIVATIVES, TRANSFORM_FORMS
from ndm.losses.likelihood import DIVERGENCES
from ndm.models.latent import LATENT_MODES
from ndm.models.ndm import FLOW_OBJECTIVES, NELBO_OBJECTIVES, OBJECTIVES
from ndm.nets.checkpointing import CHECKPOINTING
from ndm.nets.unet import UNET_PRESETS
from ndm.sampling.samplers import SAMPLERS

TRANSFORMS = ("learned", "separable", "identity", "blur")
#: Forward processes: NDM's ``N(alpha_t F_phi(x, t), sigma_t^2 I)``; NFDM's learned mean,
#: scale and volatility; NFDM-OT, NFDM's learned mean and scale with a deterministic reverse
#: process (the velocity objective) and the curvature penalty on its paths.
PROCESSES = ("ndm", "nfdm", "nfdm_ot")
#: The curvature weight of ``nfdm_ot`` unless one is given.
NFDM_OT_CURVATURE = 1.0
REVERSE_VARIANCES = ("auto", "learned", "posterior")
ARCHITECTURES = ("auto", "mlp", *UNET_PRESETS)
PRECISIONS = ("fp32", "bf16")

Check = tuple[str, Callable[[Any], bool]]
POSITIVE: Check = ("positive and finite", lambda v: 0 < v < math.inf)
NON_NEGATIVE: Check = ("non-negative and finite", lambda v: 0 <= v < math.inf)
UNIT_INTERVAL: Check = ("in [0, 1)", lambda v: 0 <= v < 1)
CLOSED_UNIT_INTERVAL: Check = ("in [0, 1]", lambda v: 0 <= v <= 1)


#: The version of the config a run stores; records without one are read as version 1
#: (:func:`config_from_record`), where 0 stood for "derived" in the optional settings.
CONFIG_VERSION = 3
#: The largest config file read (a config is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20
#: What the command line takes for an optional setting's ``None``.
AUTO = "auto"
#: ``memory_budget`` when ``grad_accum`` is given, not chosen.
NO_BUDGET = "none"


def _option(
    default: Any,
    help: str,
    choices: Any = None,
    check: Check | None = None,
    kind: type | None = None,
) -> Any:
    """A dataclass field with its help text and either its choices or a range check. A
    ``None`` default makes the setting optional: ``kind`` is then the type of its values,
    and ``None`` (``auto`` on the command line) means what ``help`` says."""
    choices = sorted(choices) if choices is not None else None
    metadata = {"help": help, "choices": choices, "check": check, "kind": kind or type(default)}
    return field(default=default, metadata=metadata)


def option_type(f: Field) -> Callable[[str], Any]:
    """The command-line parser of the setting ``f``: its type, and for an optional one
    ``auto`` for ``None``."""
    kind = f.metadata["kind"]
    if f.default is not None:
        return kind

    def parse(text: str) -> Any:
        return None if text == AUTO else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _short(value: Any) -> str:
    """``repr(value)`` cut to a line: an error never prints an unbounded value."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxdict = 2, 4, 4
    shown.maxstring, shown.maxother, shown.maxlong = 60, 60, 40
    return shown.repr(value)


class _Section:
    """Validation shared by the sections: type (taken from the default), choices, range."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), f.metadata["kind"]
            if value is None and f.default is None:
                continue
            if kind is float and type(value) is int:
                value = float(value)
                object.__setattr__(self, f.name, value)
            if type(value) is not kind:
                raise ValueError(
                    f"{f.name} must be of type {kind.__name__}, got {_short(value)} "
                    f"({type(value).__name__})"
                )
            choices, check = f.metadata["choices"], f.metadata["check"]
            if choices is not None and value not in choices:
                raise ValueError(f"unknown {f.name} {_short(value)}; choose one of {choices}")
            if check is not None and not check[1](value):
                raise ValueError(f"{f.name} must be {check[0]}, got {_short(value)}")


@dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset: toy 2-D data drawn from seeds, or images read from ``path``."""

    dataset: str = _option("checkerboard", "toy 2-D or image dataset", ALL_DATASETS)
    path: str = _option("", "folder or file of an image dataset (never downloaded)")
    resolution: int | None = _option(
        None, "image side after resizing (auto: native)", check=POSITIVE, kind=int
    )
    cache: str = _option(
        "",
        "folder where image datasets are copied once as memory-mapped files, for data "
        "larger than host memory (empty: read into memory)",
    )
    n_train: int = _option(100_000, "training set size (toy data)", check=POSITIVE)
    n_test: int = _option(10_000, "test set size (toy data)", check=POSITIVE)
    seed: int = _option(0, "seed of the data splits", check=NON_NEGATIVE)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Forward process, networks and training objective."""

    process: str = _option(
        "ndm",
        "forward process: ndm, N(alpha_t F_phi(x, t), sigma_t^2); nfdm, a learned mean, scale "
        "and volatility (the transform_* settings size its network); nfdm_ot, nfdm's mean and "
        "scale with a deterministic reverse process (objective velocity) and the curvature "
        "penalty; use it with schedule fm_ot and parameterisation x",
        PROCESSES,
    )
    transform: str = _option("learned", "data transform F_phi(x, t)", TRANSFORMS)
    transform_derivative: str = _option(
        "jvp",
        "dF/dt of a learned transform in training: jvp, or double_backward (faster on small "
        "U-Nets, more memory)",
        DERIVATIVES,
    )
    transform_form: str = _option(
        "residual",
        "learned F: residual F = x + t NN(x, t), or interpolation F = (1 - t) x + t NN(x, t)",
        TRANSFORM_FORMS,
    )
    transform_init_scale: float = _option(
        0.0,
        "learned F: NN's output layer at init, PyTorch's default init times this (0: zeros)",
        check=NON_NEGATIVE,
    )
    transform_time_scale: float | None = _option(
        None,
        "learned F: its network's sinusoidal time embedding sees this times t (auto: "
        "time_scale's value; a small value makes F, and dF/dt, smooth in t)",
        check=POSITIVE,
        kind=float,
    )
    transform_width: float = _option(
        1.0,
        "width of F's network relative to x_theta's (the U-Net's channels, the MLP's hidden "
        "units): a smaller F costs less time and memory",
        check=POSITIVE,
    )
    transform_basis: int = _option(
        4,
        "Legendre polynomials in t of the separable transform F = x + t sum_k P_k(2t-1) G_k(x)",
        check=POSITIVE,
    )
    architecture: str = _option(
        "auto",
        "network of x_theta and F_phi (auto: MLP for points, CPU U-Net for images)",
        ARCHITECTURES,
    )
    schedule: str = _option(
        "log_snr",
        "noise schedule (log_snr: gamma linear from -13.3 to 5, VDM's; linear: the paper's VP)",
        SCHEDULES,
    )
    schedule_endpoints: str = _option(
        "fixed",
        "gamma_min, gamma_max of the log_snr and learned schedules: fixed at -13.3 and 5, or "
        "learned with the model on its loss (VDM's learned end points)",
        ("fixed", "learned"),
    )
    parameterisation: str = _option("eps", "predictor output", PARAMETERISATIONS)
    hidden: int = _option(256, "hidden width of both MLPs", check=POSITIVE)
    depth: int = _option(3, "residual blocks of both MLPs", check=POSITIVE)
    objective: str = _option(
        AUTO,
        "training objective: continuous or discrete NELBO, simple noise loss, or velocity "
        "(the probability-flow ODE's velocities matched, g = 0; not a bound) (auto: velocity "
        "for process nfdm_ot, else continuous)",
        (*OBJECTIVES, AUTO),
    )
    num_steps: int = _option(1000, "steps T of the discrete objective", check=POSITIVE)
    time_scale: float | None = _option(
        None,
        "the networks' sinusoidal time embedding sees this times t (auto: T for the discrete "
        "objective, the step index as DDPM embeds it, so that the networks are smooth between "
        "grid points; 1000 otherwise)",
        check=POSITIVE,
        kind=float,
    )
    reverse_variance: str = _option(
        "auto",
        "variance of the discrete reverse steps: learned (the network also predicts "
        "Var[x | z_t]), posterior (sigma_tilde^2, the paper's eq. 10), auto: learned for the "
        "discrete objective, else posterior",
        REVERSE_VARIANCES,
    )
    time_sampling: str = _option(
        DEFAULT_TIME_SAMPLING, "p(t) of the continuous objective", TIME_SAMPLINGS
    )
    kinetic_weight: float = _option(
        0.0,
        "weight lambda of the kinetic-energy penalty lambda E_t ||v(z_t, t)||^2 of the "
        "probability-flow velocity added to the loss (0: none)",
        check=NON_NEGATIVE,
    )
    curvature_weight: float | None = _option(
        None,
        "weight of the curvature penalty E ||dv/dt||^2, the squared acceleration of the paths "
        f"the probability-flow ODE generates (auto: {NFDM_OT_CURVATURE:g} for process "
        "nfdm_ot, else 0)",
        check=NON_NEGATIVE,
        kind=float,
    )
    straightness_weight: float = _option(
        0.0,
        "weight of the straightness penalty E ||d^2 z_t / dt^2||^2, the squared acceleration "
        "of the forward process's conditional paths (0: none)",
        check=NON_NEGATIVE,
    )

    @property
    def curvature(self) -> float:
        """The curvature weight: ``curvature_weight``, or when it is ``None``
        :data:`NFDM_OT_CURVATURE` for ``nfdm_ot`` and 0 otherwise."""
        if self.curvature_weight is not None:
            return self.curvature_weight
        return NFDM_OT_CURVATURE if self.process == "nfdm_ot" else 0.0

    @property
    def training_objective(self) -> str:
        """The objective: ``objective``, or when it is ``auto`` ``velocity`` for ``nfdm_ot``
        and ``continuous`` otherwise."""
        if self.objective != AUTO:
            return self.objective
        return "velocity" if self.process == "nfdm_ot" else "continuous"

    @property
    def learns_variance(self) -> bool:
        """Whether the predictor also predicts ``Var[x | z_t]`` (``reverse_variance``
        ``learned``, or ``auto`` with the discrete objective)."""
        if self.reverse_variance == "auto":
            return self.training_objective == "discrete"
        return self.reverse_variance == "learned"

    @property
    def network_time_scale(self) -> float:
        """What the predictor's (and by default F's) time embedding multiplies ``t`` by:
        ``time_scale``, or when it is ``None`` ``T`` with the discrete objective (its grid
        ``t = i / T`` becomes the step index ``i``) and 1000 otherwise."""
        if self.time_scale is not None:
            return self.time_scale
        return float(self.num_steps) if self.training_objective == "discrete" else 1000.0

    @property
    def transform_network_time_scale(self) -> float:
        """What a learned F's time embedding multiplies ``t`` by: ``transform_time_scale``,
        or when it is ``None`` :attr:`network_time_scale`."""
        if self.transform_time_scale is not None:
            return self.transform_time_scale
        return self.network_time_scale

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.training_objective == "simple" and self.transform in ("learned", "separable"):
            raise ValueError(
                f"objective 'simple' collapses a {self.transform} transform to 0; use objective "
                "'continuous' or 'discrete', or transform 'identity'"
            )
        if self.reverse_variance == "learned" and self.training_objective != "discrete":
            raise ValueError(
                f"reverse_variance 'learned' is trained by the discrete objective; objective "
                f"{self.training_objective!r} leaves it untrained: use 'auto' or 'posterior'"
            )
        learned_only = {
            "transform_form": "residual",
            "transform_init_scale": 0.0,
            "transform_time_scale": None,
        }
        given = [name for name, default in learned_only.items() if getattr(self, name) != default]
        if given and self.transform != "learned":
            raise ValueError(f"{given} shape a learned transform; transform is {self.transform!r}")
        if self.transform_width != 1.0 and self.transform not in ("learned", "separable"):
            raise ValueError(
                f"transform_width sizes the network of a learned or separable transform; "
                f"transform {self.transform!r} has none"
            )
        if self.schedule_endpoints == "learned" and self.schedule not in LEARNABLE_ENDPOINTS:
            raise ValueError(
                f"schedule {self.schedule!r} has fixed end points; schedule_endpoints 'learned' "
                f"needs one of {list(LEARNABLE_ENDPOINTS)}"
            )
        if self.process != "ndm":
            self._check_nfdm()
        if self.schedule == "fm_ot" and self.parameterisation == "eps":
            raise ValueError(
                "schedule 'fm_ot' has alpha_1 = 0, which an eps predictor divides by; "
                "use parameterisation 'x'"
            )

    def _check_nfdm(self) -> None:
        """An NFDM's network is sized by the learned transform's settings; it trains with
        the continuous objective or the velocity one, and NFDM-OT, whose reverse process is
        deterministic, with the velocity one."""
        if self.transform != "learned":
            raise ValueError(
                f"process {self.process!r} learns its own mean and scale; transform "
                f"{self.transform!r} belongs to process 'ndm'"
            )
        for name in ("transform_form", "transform_init_scale"):
            if getattr(self, name) != getattr(type(self), name):
                raise ValueError(f"{name} shapes NDM's F; process {self.process!r} has none")
        allowed = ("velocity",) if self.process == "nfdm_ot" else FLOW_OBJECTIVES
        if self.training_objective not in allowed:
            raise ValueError(
                f"process {self.process!r} trains with objective "
                f"{' or '.join(map(repr, allowed))}, not {self.training_objective!r}"
            )


@dataclass(frozen=True)
class LatentConfig(_Section):
    """A latent NDM (images only): the autoencoder, and how it is trained with the NDM.

    ``latent_mode`` ``"none"`` is a pixel run. Otherwise the first ``autoencoder_steps`` steps
    train the autoencoder as a VAE with a standard normal prior, then ``two_stage`` trains the
    NDM on the frozen encoder's draws and ``end_to_end`` trains all parameters on the bound.
    The ``model`` section then describes the NDM on the latents.
    """

    latent_mode: str = _option(
        "none", "latent NDM training (none: pixel NDM)", ("none", *LATENT_MODES)
    )
    latent_channels: int = _option(4, "channels c of the latents", check=POSITIVE)
    latent_downsample: int = _option(
        1, "stride-2 steps of the encoder: latents [c, H / 2^k, W / 2^k]", check=NON_NEGATIVE
    )
    latent_hidden: int = _option(64, "width of the encoder and decoder networks", check=POSITIVE)
    autoencoder_steps: int = _option(
        1000, "first steps training the autoencoder alone (VAE, N(0, I) prior)", check=NON_NEGATIVE
    )

    @property
    def enabled(self) -> bool:
        """Whether the run is a latent NDM."""
        return self.latent_mode != "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.enabled:
            changed = [f.name for f in fields(self) if getattr(self, f.name) != f.default]
            if changed:
                raise ValueError(
                    f"latent options {changed} need a latent NDM: give --latent-mode "
                    f"({' or '.join(LATENT_MODES)})"
                )
        if self.latent_mode == "two_stage" and self.autoencoder_steps == 0:
            raise ValueError(
                "latent mode 'two_stage' freezes the autoencoder after its own steps: "
                "autoencoder_steps must be positive"
            )


def _is_budget(text: str) -> bool:
    if text in (NO_BUDGET, AUTO):
        return True
    try:
        return 0 < float(text) < math.inf
    except ValueError:
        return False


def _is_device(name: str) -> bool:
    if name == "auto":
        return True
    try:
        return torch.device(name).type != "meta"  # meta tensors hold no data to train on
    except RuntimeError:
        return False


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Optimisation, seeds and the cadence of logs and checkpoints."""

    steps: int = _option(2_000, "total optimisation steps", check=POSITIVE)
    batch_size: int = _option(512, "global minibatch size (all processes)", check=POSITIVE)
    grad_accum: int = _option(1, "micro-batches accumulated per step", check=POSITIVE)
    memory_budget: str = _option(
        NO_BUDGET,
        "GiB a process may use, or auto (the CUDA device's free memory): grad_accum is then "
        "chosen before the first step, the fewest micro-batches whose step fits, and recorded",
        check=("none, auto or a positive number of GiB", _is_budget),
    )
    lr: float = _option(2e-3, "AdamW learning rate", check=POSITIVE)
    weight_decay: float = _option(0.0, "AdamW weight decay", check=NON_NEGATIVE)
    transform_lr: float | None = _option(
        None,
        "learning rate of the transform's parameters phi (auto: lr; 0 freezes phi)",
        check=NON_NEGATIVE,
        kind=float,
    )
    warmup_steps: int = _option(500, "steps of linear learning-rate warmup", check=NON_NEGATIVE)
    ema_decay: float = _option(0.995, "decay of the weight EMA", check=UNIT_INTERVAL)
    grad_clip: float = _option(1.0, "maximum gradient norm", check=POSITIVE)
    grad_clip_scope: str = _option(
        "all",
        "what grad_clip bounds: the norm of all gradients, or (apart) those of the transform's "
        "parameters phi and of the rest, each on its own, so that phi's gradient does not "
        "scale down the predictor's",
        ("all", "apart"),
    )
    checkpointing: str = _option(
        "none",
        "activation checkpointing, memory for time, with the same gradients: none; the blocks "
        "of F's network (transform) or of every network (all); or, least memory and most "
        "time, every network's blocks and each whole call (all_calls)",
        CHECKPOINTING,
    )
    seed: int = _option(0, "seed of initialisation, minibatches and noise", check=NON_NEGATIVE)
    checkpoint_every: int = _option(1000, "steps between checkpoints", check=POSITIVE)
    log_every: int = _option(100, "steps between metric lines", check=POSITIVE)
    device: str = _option(
        "auto",
        "torch device (auto: GPU if any)",
        check=("a torch device name (not meta)", _is_device),
    )
    precision: str = _option(
        "fp32", "bf16: autocast the networks to bfloat16 (GPU or CPU)", PRECISIONS
    )
    loggers: str = _option(
        "auto",
        "experiment loggers beside metrics.jsonl, comma-separated: tensorboard, wandb, mlflow "
        "(auto: tensorboard if installed; none)",
    )


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Test-set likelihood evaluation and the samples drawn after training."""

    n_eval: int = _option(500, "test points evaluated", check=POSITIVE)
    divergence: str = _option(
        "auto",
        "ODE NLL divergence (auto: exact for points, Hutchinson for images)",
        ("auto", *DIVERGENCES),
    )
    probes: int = _option(1, "Hutchinson probes per example", check=POSITIVE)
    nelbo_terms: int | None = _option(
        None,
        "discrete NELBO: strata K (auto: all T terms; else the first T/K steps exactly and one "
        "drawn step in each other block of T/K)",
        check=POSITIVE,
        kind=int,
    )
    rtol: float = _option(1e-5, "relative tolerance of the ODE solver", check=POSITIVE)
    atol: float = _option(1e-5, "absolute tolerance of the ODE solver", check=POSITIVE)
    nll_max_steps: int | None = _option(
        None,
        "dopri5 steps allowed per NLL solve (auto: no limit); where a solve needs more, the "
        "evaluation reports the NLL as left out, with why, and still reports the NELBO",
        check=POSITIVE,
        kind=int,
    )
    nelbo_time_samples: int = _option(64, "time samples per point of the NELBO", check=POSITIVE)
    n_samples: int = _option(2000, "samples drawn for the plots", check=POSITIVE)
    fid_samples: int = _option(0, "samples for FID on images (0: no FID)", check=NON_NEGATIVE)
    fid_sampler: str = _option("ddpm", "sampler of the FID samples", tuple(SAMPLERS))
    fid_steps: int | None = _option(
        None, "sampler steps of the FID samples (auto: the model's T)", check=POSITIVE, kind=int
    )
    fid_weights: str = _option("", "Inception-v3 FID weights file (else classifier features)")
    classifier_steps: int = _option(
        1000, "training steps of the FID feature classifier", check=POSITIVE
    )


@dataclass(frozen=True)
class RunConfig:
    """A whole run: data, model, training, evaluation and latent sections."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)

    def __post_init__(self) -> None:
        image = is_image_dataset(self.data.dataset)
        if image and self.model.architecture == "mlp":
            raise ValueError(
                f"architecture 'mlp' is for toy 2-D data; dataset {self.data.dataset!r} "
                "holds images: use a U-Net preset or 'auto'"
            )
        if not image and self.model.architecture not in ("auto", "mlp"):
            raise ValueError(
                f"architecture {self.model.architecture!r} is a U-Net for images; dataset "
                f"{self.data.dataset!r} holds 2-D points: use 'mlp' or 'auto'"
            )
        if not image and self.model.transform == "blur":
            raise ValueError("transform 'blur' blurs images; it needs an image dataset")
        if not image and self.latent.enabled:
            raise ValueError(
                f"a latent NDM encodes images; dataset {self.data.dataset!r} holds 2-D points: "
                "drop the latent options or choose an image dataset"
            )
        objective = self.model.training_objective
        if self.latent.enabled and objective not in NELBO_OBJECTIVES:
            raise ValueError(
                f"a latent NDM is trained on its bound; objective {objective!r} is not one: use "
                "'continuous' or 'discrete'"
            )
        terms = self.eval.nelbo_terms
        if self.model.training_objective == "discrete" and terms and self.model.num_steps % terms:
            raise ValueError(
                f"nelbo_terms {terms} must divide num_steps {self.model.num_steps} "
                "(auto: all terms)"
            )
        if self.eval.fid_samples == 1:
            raise ValueError("fid_samples must be 0 (no FID) or at least 2: FID needs a covariance")
        if self.latent.enabled and self.model.kinetic_weight > 0:
            raise ValueError(
                "the kinetic-energy penalty is not implemented for a latent NDM; drop "
                "--kinetic-weight or the latent options"
            )


def _sections() -> dict[str, type]:
    """Section name -> section dataclass, in the order of :class:`RunConfig`."""
    hints = get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in fields(RunConfig)}


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain dict ``{section: {field: value}}`` and the ``version`` of the format,
    JSON-serialisable."""
    return asdict(cfg) | {"version": CONFIG_VERSION}


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Inverse of :func:`config_to_dict`. Missing fields take their defaults; unknown
    sections or fields raise ``ValueError`` naming them."""
    sections = _sections()
    if not isinstance(data, Mapping):
        raise ValueError(f"a config must be a mapping of sections, got {type(data).__name__}")
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ValueError(
            f"config version {_short(version)} is not {CONFIG_VERSION}, the one this ndm reads; a "
            "run's own config is read with config_from_record"
        )
    unknown = sorted(set(data) - set(sections) - {"version"})
    if unknown:
        raise ValueError(f"unknown config sections {unknown}; known: {list(sections)}")
    built = {}
    for name, cls in sections.items():
        values = data.get(name, {})
        if not isinstance(values, Mapping):
            raise ValueError(f"config section {name!r} must be a mapping, got {_short(values)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown} in section {name!r}")
        built[name] = cls(**values)
    return RunConfig(**built)


def with_resolved_time_scales(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the networks' time scales given explicitly (the values of ``None``,
    which depend on the objective and ``T``), as a run stores them."""
    model = cfg.model
    resolved = {"time_scale": model.network_time_scale}
    if model.transform == "learned":
        resolved["transform_time_scale"] = model.transform_network_time_scale
    return replace(cfg, model=replace(model, **resolved))


def with_resolved_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its data and FID-weights paths made absolute, so that a run can be
    sampled, evaluated and resumed from any working directory."""

    def resolved(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if path else path

    return replace(
        cfg,
        data=replace(cfg.data, path=resolved(cfg.data.path), cache=resolved(cfg.data.cache)),
        eval=replace(cfg.eval, fid_weights=resolved(cfg.eval.fid_weights)),
    )


#: Settings where version 1 of the config stored 0 for "derived", which version 2 says with
#: ``None`` (0 is now out of range for all but ``transform_lr``, where it freezes phi).
_DERIVED_AS_ZERO_IN_VERSION_1 = {
    "data": ("resolution",),
    "model": ("time_scale", "transform_time_scale"),
    "train": ("transform_lr",),
    "eval": ("nelbo_terms", "nll_max_steps", "fid_steps"),
}


def _from_version_1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 record in version 2 (:func:`_from_version_2` takes it on): a model
    setting that an earlier version did not store has the value that version used (the
    posterior reverse variance, and time embeddings at 1000 t, which was also the stored
    ``transform_time_scale`` of transforms it did not shape), and the 0 of a derived
    setting is ``None``."""
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    model = data.get("model")
    if isinstance(model, dict):
        model.setdefault("reverse_variance", "posterior")
        model.setdefault("time_scale", 1000.0)
        if model.get("transform", "learned") == "learned":
            model.setdefault("transform_time_scale", 1000.0)
        elif model.get("transform_time_scale") == 1000.0:
            del model["transform_time_scale"]
    for section, names in _DERIVED_AS_ZERO_IN_VERSION_1.items():
        values = data.get(section)
        for name in names if isinstance(values, dict) else ():
            if values.get(name) == 0:
                values[name] = None
    return data | {"version": 2}


def _from_version_2(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-2 record in version 3. Version 2's ``nfdm_ot`` was NFDM with the
    straightness penalty at weight 1 unless given (``None``, ``auto``), which version 3
    spells as process ``nfdm`` with that weight: its runs resume as they were trained.
    Version 3's ``nfdm_ot`` is the deterministic reverse process with the curvature
    penalty."""
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    model = data.get("model")
    if isinstance(model, dict):
        old_ot = model.get("process") == "nfdm_ot"
        if old_ot:
            model["process"] = "nfdm"
        if model.get("straightness_weight") is None:
            model["straightness_weight"] = 1.0 if old_ot else 0.0
    return data | {"version": CONFIG_VERSION}


def config_from_record(data: Mapping[str, Any]) -> RunConfig:
    """:func:`config_from_dict` of a config stored by a run or an export, of this version
    or of an earlier one (version 1 has no ``version``)."""
    if isinstance(data, Mapping) and "version" not in data:
        data = _from_version_1(data)
    if isinstance(data, Mapping) and data.get("version") == 2:
        data = _from_version_2(data)
    return config_from_dict(data)


def with_data_path(cfg: RunConfig, data_path: Path | None) -> RunConfig:
    """``cfg`` reading its dataset from ``data_path`` when one is given."""
    if data_path is None:
        return cfg
    return replace(cfg, data=replace(cfg.data, path=str(data_path.expanduser().resolve())))


def read_config_file(path: Path) -> RunConfig:
    """The run config of a JSON file (``{section: {field: value}}``, as ``config.json``), or
    of a YAML file of the same shape (``.yaml``/``.yml``, read by ``yaml.safe_load``, which
    builds plain values only). A file over :data:`MAX_CONFIG_BYTES`, a YAML alias (which
    could expand a few bytes into gigabytes) and nesting too deep to read are refused."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as error:
        raise FileNotFoundError(f"config file {path} not found") from error
    if size > MAX_CONFIG_BYTES:
        raise ValueError(
            f"config file {path} holds {size} bytes, more than a config's {MAX_CONFIG_BYTES}"
        )
    text = path.read_text()
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        data = _read_yaml(path, text) if is_yaml else json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {path} is not JSON ({error})") from error
    except RecursionError as error:
        raise ValueError(f"config file {path} is nested too deep to be a config") from error
    try:
        return config_from_dict(data)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config file {path}: {error}") from error


def _read_yaml(path: Path, text: str) -> Any:
    """The plain values of a YAML config; ``ValueError`` for bad YAML or an alias."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ValueError(
                    f"config file {path} uses a YAML alias at line {mark.line + 1}; a config "
                    "spells out its values"
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader: plain values only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"config file {path} is not YAML ({problem}{where})") from error


def flag_names() -> dict[tuple[str, str], str]:
    """``(section, field) -> flag`` with the section prefixed to names used more than once."""
    pairs = [(s, f.name) for s, cls in _sections().items() for f in fields(cls)]
    counts: dict[str, int] = {}
    for _, name in pairs:
        counts[name] = counts.get(name, 0) + 1
    return {
        (s, n): "--" + (n if counts[n] == 1 else f"{s}_{n}").replace("_", "-") for s, n in pairs
    }


def add_config_arguments(
    parser: argparse.ArgumentParser, config_cls: type[RunConfig] = RunConfig
) -> None:
    """Add one flag per field of ``config_cls`` (a group per section). Flags not given on
    the command line are absent from the parsed namespace, so that
    :func:`config_from_args` can tell them from defaults."""
    flags = flag_names()
    hints = get_type_hints(config_cls)
    for section in fields(config_cls):
        group = parser.add_argument_group(f"{section.name} options")
        for f in fields(hints[section.name]):
            choices = f.metadata["choices"]
            group.add_argument(
                flags[section.name, f.name],
                dest=f"{section.name}.{f.name}",
                type=option_type(f),
                choices=choices,
                default=argparse.SUPPRESS,
                metavar=None if choices else f.name.upper(),
                help=f"{f.metadata['help']} (default: {AUTO if f.default is None else f.default})",
            )


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The config of ``base`` (default: :class:`RunConfig` defaults) with the flags given
    in ``args`` applied; invalid values raise ``ValueError``."""
    data = config_to_dict(base or RunConfig())
    for key, value in vars(args).items():
        section, _, name = key.partition(".")
        if section in data and name in data[section]:
            data[section][name] = value
    return config_from_dict(data)
