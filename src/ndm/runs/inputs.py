"""What a run trains on: the configured dataset or points handed to :func:`ndm.train`,
checked before anything is written, and each step's micro-batches with their noise."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ndm.data.loading import Splits, load_splits, model_input
from ndm.data.points import POINTS_DATASET, read_points
from ndm.runs.config import DataConfig, EvalConfig, RunConfig
from ndm.runs.distributed import Distributed, shard_seed
from ndm.runs.folder import DATA, TrainedRun


def load_data(cfg: DataConfig) -> Splits:
    """The train and test splits of the configured dataset."""
    return load_splits(
        cfg.dataset, cfg.n_train, cfg.n_test, cfg.seed, cfg.path, cfg.resolution, cfg.cache
    )


def check_data(x: Tensor, num_levels: int | None = None, what: str = "training data") -> None:
    """Raise ``ValueError`` unless ``x`` is non-empty floating ``[N, D]`` data of finite
    values, or (``num_levels`` given) integer images ``[N, C, H, W]`` with levels in
    ``0..num_levels-1``."""
    if num_levels is not None:
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(f"image data must have shape [N, C, H, W], got {tuple(x.shape)}")
        if x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"image data must hold integer levels, got {x.dtype}")
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= num_levels:
            raise ValueError(f"image levels must lie in 0..{num_levels - 1}, got {low}..{high}")
        return
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must have shape [N, D] with N, D > 0, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating point, got {x.dtype}")
    bad = int((~torch.isfinite(x)).any(dim=1).sum())
    if bad:
        raise ValueError(f"{what} holds NaN or inf values in {bad} of {x.shape[0]} rows")


def check_evaluable(splits: Splits, cfg: EvalConfig) -> None:
    """What the evaluation after training needs, checked before the first step: test
    examples, and for FID the weights file when one is named and torchmetrics, which must
    import here."""
    splits.require_test_examples()
    if cfg.fid_weights and not Path(cfg.fid_weights).is_file():
        raise FileNotFoundError(f"FID weights file {cfg.fid_weights} not found")
    if cfg.fid_samples and splits.is_image:
        try:
            importlib.import_module("torchmetrics.image.fid")
        except Exception as error:  # a broken install fails in many ways (ImportError, OSError)
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise ValueError(
                f"FID (--fid-samples {cfg.fid_samples}) needs torchmetrics, which does not "
                f"import here ({reason}); mend the install or give --fid-samples 0"
            ) from error


def given_points(
    cfg: RunConfig, run_dir: Path, resume: bool, train_data: Tensor, test_data: Tensor | None
) -> tuple[RunConfig, Splits]:
    """The config and splits of a run trained on points handed to :func:`ndm.train`: its
    data section names the ``points`` file the run keeps of them (``data.npz``). A resumed
    run must be given the points it was trained on."""
    test = train_data[:0] if test_data is None else test_data
    for name, x in (("train_data", train_data), ("test_data", test)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    check_data(train_data)
    if test.numel():
        check_data(test)
    if test.dim() != 2 or test.shape[1] != train_data.shape[1]:
        raise ValueError(
            f"test_data must have shape [M, {train_data.shape[1]}], got {tuple(test.shape)}"
        )
    path = run_dir / DATA
    if resume and path.exists():
        kept, _ = read_points(path)
        if kept.shape != train_data.shape or not torch.equal(kept, train_data.float().cpu()):
            raise ValueError(
                f"cannot resume {run_dir}: it was trained on other points (kept in {path})"
            )
    data = DataConfig(dataset=POINTS_DATASET, path=str(path.resolve()))
    return replace(cfg, data=data), Splits(train_data, test, None, False, None)


def training_splits(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    train_data: Tensor | None,
    test_data: Tensor | None,
) -> tuple[RunConfig, Splits]:
    """The config and the checked splits of a run: the configured dataset (which must also
    be evaluable after training, but for a points file without test points), or the given
    points; every split is checked before the first step."""
    if train_data is None:
        splits = load_data(cfg.data)
        if cfg.data.dataset != POINTS_DATASET or splits.test.shape[0]:  # a test array is optional
            check_evaluable(splits, cfg.eval)
    else:
        cfg, splits = given_points(cfg, run_dir, resume, train_data, test_data)
    check_data(splits.train, splits.num_levels)
    if splits.test.shape[0]:  # the figures and evaluation after training read it
        check_data(splits.test, splits.num_levels, "test data")
    return cfg, splits


#: Examples of each split an image run's digest reads: enough to tell datasets apart.
DIGEST_IMAGES = 256


def data_digest(cfg: RunConfig, splits: Splits) -> str | None:
    """SHA-256 of a run's data, so that a resume, ``ndm sample`` and ``ndm eval`` refuse
    other data: all train and test points of a points file; the first
    :data:`DIGEST_IMAGES` train and test images (their levels) of an image dataset; ``None``
    for toy data, which seeds draw."""
    if cfg.data.dataset != POINTS_DATASET and not splits.is_image:
        return None
    digest = hashlib.sha256()
    for x in (splits.train, splits.test):
        part = x[:DIGEST_IMAGES] if splits.is_image else x
        digest.update(str(tuple(x.shape)).encode())
        digest.update(part.contiguous().numpy().tobytes())
    return digest.hexdigest()


def micro_batch_size(cfg: RunConfig, place: Distributed) -> int:
    """Examples per micro-batch; the global batch must split evenly over processes and
    accumulation steps."""
    parts = place.world_size * cfg.train.grad_accum
    if cfg.train.batch_size % parts:
        raise ValueError(
            f"batch_size {cfg.train.batch_size} does not split into {place.world_size} "
            f"processes x {cfg.train.grad_accum} accumulation steps"
        )
    return cfg.train.batch_size // parts


def draw_micro_batches(
    splits: Splits,
    cfg: RunConfig,
    place: Distributed,
    step: int,
    batches: torch.Generator,
) -> list[tuple[Tensor, torch.Generator]]:
    """This process's micro-batches of ``step`` as ``(x on the device, noise generator)``.

    The global minibatch of ``batch_size`` indices is drawn from ``batches`` and cut into
    ``world_size * grad_accum`` micro-batches; process ``r`` takes ``r * grad_accum ...``,
    and micro-batch ``k`` takes its noise from a generator seeded by ``(seed, step, k)``.
    The data stay on the host; each micro-batch is copied to the device on its own (pinned
    and non-blocking on CUDA).
    """
    device, size = place.device, micro_batch_size(cfg, place)
    index = torch.randint(splits.train.shape[0], (cfg.train.batch_size,), generator=batches)
    micro_batches = []
    for m in range(cfg.train.grad_accum):
        shard = place.rank * cfg.train.grad_accum + m
        generator = torch.Generator(device).manual_seed(shard_seed(cfg.train.seed, step, shard))
        batch = splits.train[index[shard * size : (shard + 1) * size]]
        if device.type == "cuda":
            batch = batch.pin_memory()
        x = model_input(batch.to(device, non_blocking=True), splits, generator, augment=True)
        micro_batches.append((x, generator))
    return micro_batches


def require_test_points(cfg: RunConfig) -> None:
    """A points file, whose test array is optional, must hold test points when the
    evaluation after training is asked for; ``ValueError`` before training otherwise."""
    if cfg.data.dataset == POINTS_DATASET and load_data(cfg.data).test.shape[0] == 0:
        raise ValueError(
            f"points file {cfg.data.path} holds no test points, which the evaluation after "
            "training needs: add a 'test' array or give --eval none"
        )


def trained_run_data(trained: TrainedRun, cfg: RunConfig) -> Splits:
    """The data of a trained run (``cfg``: its config, the data path perhaps moved): a
    missing dataset says how to point at it, and data of another shape or number of levels
    than the run was trained on, or other data than its digest says (:func:`data_digest`),
    is refused."""
    try:
        splits = load_data(cfg.data)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error}; if the run's data has moved, give its new place with --data-path"
        ) from error
    if (splits.shape, splits.num_levels) != (trained.shape, trained.num_levels):
        raise ValueError(
            f"the data at {cfg.data.path or cfg.data.dataset} has examples of shape "
            f"{list(splits.shape)} and {splits.num_levels} levels; the run was trained on "
            f"{list(trained.shape)} and {trained.num_levels}: not its dataset"
        )
    if trained.data_digest not in (None, data_digest(cfg, splits)):
        raise ValueError(
            f"the data at {cfg.data.path or cfg.data.dataset} is not the data the run was "
            "trained on (its digest differs)"
        )
    return splits
