"""Command line: ``ndm train``, ``ndm sample RUN``, ``ndm eval RUN`` and ``ndm export RUN OUT``.

``ndm`` with no command prints its help. Errors print one line to stderr and
return a non-zero exit code (2 for bad arguments, 1 otherwise). Training ends with the
run's ``metrics.json``; each ``ndm eval`` adds a record ``evals/<time>.json`` and changes
nothing else. Every record holds the checkpoint's step, the time, the data path and the
evaluation settings beside the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import NoReturn

import torch

from ndm.checkpoint import atomic_write, save_json
from ndm.config import (
    CLOSED_UNIT_INTERVAL,
    NON_NEGATIVE,
    POSITIVE,
    Check,
    EvalConfig,
    RunConfig,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_to_dict,
)
from ndm.data.loading import Splits, model_input
from ndm.distributed import init_distributed
from ndm.evaluation import (
    evaluate,
    evaluate_latent,
    fid_features,
    sample_images,
    sample_quality,
)
from ndm.export import DESCRIPTION, export_run
from ndm.image_plots import plot_image_samples, plot_image_transform, plot_predictions_from_noise
from ndm.latent import LatentNDM
from ndm.loggers import finite_scalars, open_loggers, uint8_grid
from ndm.model import NDM
from ndm.plots import plot_samples, plot_trajectories, plot_transform
from ndm.run_guard import RunStopped
from ndm.samplers import ODE_METHODS, SAMPLERS
from ndm.training import (
    METRICS_SUMMARY,
    RUN_FILES,
    check_evaluable,
    load_data,
    load_run,
    load_run_config,
    read_run,
    train,
)

TRAJECTORY_STEPS = 50
EVALUATIONS = "evals"  # one JSON record per `ndm eval`, named by its time
DATA_PATH_HELP = "where the run's dataset is now (default: the path it was trained from)"
DEVICE_HELP = "torch device (auto: a GPU if there is one)"
EVAL_LEVELS = ("full", "fast", "none")
FAST_EVAL = 100  # test examples and plot samples of --eval fast
TRANSFORM_POINTS = 2000
TRANSFORM_IMAGES = 6


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends with each option's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(kind: type, check: Check) -> Callable[[str], object]:
    """An argparse ``type`` that parses with ``kind`` and applies ``check``."""

    def parse(text: str) -> object:
        value = kind(text)
        if not check[1](value):
            raise argparse.ArgumentTypeError(f"must be {check[0]}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _summary(metrics: dict) -> str:
    nll = (
        f"test NLL   {metrics['nll']:.4f} +- {metrics['nll_stderr']:.4f} nats "
        f"({metrics['nll_bpd']:.4f} bits/dim, {metrics['nll_nfe']:.0f} NFE per batch)"
        if "nll" in metrics
        else f"test NLL   left out: {metrics.get('nll_failure')}"
    )
    lines = [
        nll,
        f"test NELBO {metrics['nelbo']:.4f} +- {metrics['nelbo_stderr']:.4f} nats "
        f"({metrics['nelbo_bpd']:.4f} bits/dim; prior {metrics['nelbo_prior']:.4f}, "
        f"diffusion {metrics['nelbo_diffusion']:.4f}, "
        f"reconstruction {metrics['nelbo_reconstruction']:.4f})",
    ]
    if "nelbo_decoder" in metrics:
        lines[1] = lines[1][:-1] + (
            f"; decoder -log p(x|y) {metrics['nelbo_decoder']:.4f}, "
            f"encoder -H[q(y|x)] {metrics['nelbo_encoder']:.4f}; bits/dim of the data, "
            f"latents of {metrics['latent_dims']} dimensions)"
        )
    if metrics["entropy"] is not None:
        lines.append(
            f"data entropy {metrics['entropy']:.4f} nats ({metrics['entropy_bpd']:.4f} bits/dim)"
        )
    if "fid" in metrics:
        accuracy = metrics.get("classifier_test_accuracy")
        features = metrics["fid_features"] + (
            "" if accuracy is None else f", test accuracy {accuracy:.3f}"
        )
        lines.append(
            f"FID {metrics['fid']:.3f} ({metrics['fid_samples']} samples, {metrics['fid_sampler']} "
            f"{metrics['fid_steps']} steps; features: {features})"
        )
    return "\n".join(lines)


def _report(model: NDM | LatentNDM, cfg: RunConfig, run_dir: Path, level: str) -> dict:
    """Write the figures and ``metrics.json`` of a trained run, evaluated at ``level``
    (``fast`` or ``full``, see :func:`_evaluation_level`); return the metrics."""
    cfg = _evaluation_level(cfg, level)
    splits = load_data(cfg.data)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.train.seed)
    print(f"sampling {cfg.eval.n_samples} examples along the ODE", file=sys.stderr)
    if splits.is_image:
        samples, nfe = sample_images(
            model,
            splits,
            cfg.eval.n_samples,
            "ode",
            1,
            generator,
            rtol=cfg.eval.rtol,
            atol=cfg.eval.atol,
        )
        test = model_input(splits.test[: cfg.eval.n_samples], splits, None, augment=False)
        caption = f"ode-dopri5, rtol {cfg.eval.rtol:g}, NFE {nfe:.0f}"
        plot_image_samples(samples, test, run_dir / "samples.png", caption=caption)
        if not isinstance(model, LatentNDM):  # a latent NDM's F and x_theta act on latents
            plot_image_transform(model, test[:TRANSFORM_IMAGES], run_dir / "transform.png")
            plot_predictions_from_noise(
                {cfg.model.transform: model}, splits.shape, run_dir / "predictions.png"
            )
    else:
        result = model.sample(
            (cfg.eval.n_samples, *splits.shape),
            sampler="ode",
            steps=TRAJECTORY_STEPS,
            generator=generator,
            method="dopri5",
            rtol=cfg.eval.rtol,
            atol=cfg.eval.atol,
            trajectory=True,
        )
        caption = f"ode-dopri5, rtol {cfg.eval.rtol:g}, NFE {result.nfe}"
        plot_samples(
            result.sample, splits.test[: cfg.eval.n_samples], run_dir / "samples.png", caption
        )
        plot_transform(model, splits.test[:TRANSFORM_POINTS], run_dir / "transform.png")
        plot_trajectories(
            result.trajectory, run_dir / "trajectories.png", splits.test[:TRANSFORM_POINTS]
        )
    metrics = _record(_metrics(model, cfg, splits), cfg, cfg.train.steps)
    save_json(run_dir / METRICS_SUMMARY, metrics)
    _log_evaluation(cfg, run_dir, metrics, samples if splits.is_image else None)
    return metrics


def _log_evaluation(
    cfg: RunConfig, run_dir: Path, metrics: dict, samples: torch.Tensor | None
) -> None:
    """Send the metrics (and image samples, ``[N, C, H, W]``) to the run's loggers, at the
    checkpoint's step."""
    for logger in open_loggers(cfg.train.loggers, run_dir, config_to_dict(cfg)):
        logger.scalars(metrics["step"], finite_scalars("eval", metrics))
        if samples is not None:
            logger.images(metrics["step"], "eval/samples", uint8_grid(samples[:64]))
        logger.close()


def _record(metrics: dict, cfg: RunConfig, step: int) -> dict:
    """``metrics`` with what produced them: the checkpoint's step, the time, the data path
    and the evaluation settings."""
    return {
        "step": step,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_path": cfg.data.path,
        "eval_settings": asdict(cfg.eval),
    } | metrics


def _unused_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``folder/stem-<k>.suffix`` with the first free ``k``."""
    path, k = folder / f"{stem}{suffix}", 1
    while path.exists():
        path, k = folder / f"{stem}-{k}{suffix}", k + 1
    return path


def _moved_data(cfg: RunConfig, data_path: Path | None) -> RunConfig:
    """``cfg`` reading its dataset from ``data_path`` when one is given."""
    if data_path is None:
        return cfg
    return replace(cfg, data=replace(cfg.data, path=str(data_path.expanduser().resolve())))


def _metrics(model: NDM | LatentNDM, cfg: RunConfig, splits: Splits) -> dict:
    """Likelihoods on the test split (the latent bound for a latent NDM), and FID when
    asked for on images."""
    if isinstance(model, LatentNDM):
        metrics = evaluate_latent(model, splits, cfg.eval)
    else:
        metrics = evaluate(model, splits, cfg.eval)
    if splits.is_image and cfg.eval.fid_samples:
        print(f"FID on {cfg.eval.fid_samples} samples", file=sys.stderr)
        features, info = fid_features(splits, cfg.eval, cfg.train.seed)
        steps = cfg.eval.fid_steps or cfg.model.num_steps
        metrics |= info | sample_quality(model, splits, cfg.eval, features, steps)
    return metrics


def _config_file(path: Path) -> RunConfig:
    """The run config of a JSON file (``{section: {field: value}}``, as ``config.json``), or
    of a YAML file of the same shape (``.yaml``/``.yml``, read by ``yaml.safe_load``, which
    builds plain values only)."""
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"config file {path} not found") from error
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ValueError(f"config file {path} is not YAML ({problem}{where})") from error
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path} is not JSON ({error})") from error
    try:
        return config_from_dict(data)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config file {path}: {error}") from error


def _evaluation_level(cfg: RunConfig, level: str) -> RunConfig:
    """``cfg`` evaluated as ``--eval`` asks: ``full`` as configured; ``fast`` on at most
    :data:`FAST_EVAL` test examples and plot samples, tolerances 1e-3, no FID."""
    if level != "fast":
        return cfg
    e = cfg.eval
    fast = replace(
        e,
        n_eval=min(e.n_eval, FAST_EVAL),
        n_samples=min(e.n_samples, FAST_EVAL),
        rtol=max(e.rtol, 1e-3),
        atol=max(e.atol, 1e-3),
        nelbo_time_samples=min(e.nelbo_time_samples, 8),
        fid_samples=0,
    )
    return replace(cfg, eval=fast)


def _train(args: argparse.Namespace) -> None:
    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs the --run-dir of the run to continue")
    if args.resume and args.config is not None:
        raise ValueError("--config starts a run; --resume continues one with its own config")
    base = load_run_config(args.run_dir) if args.resume else None
    if args.config is not None:
        base = _config_file(args.config)
    cfg = config_from_args(args, base)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    latent = "latent-" if cfg.latent.enabled else ""
    name = f"{cfg.data.dataset}-{latent}{cfg.model.transform}-{stamp}"
    run_dir = args.run_dir or Path("runs") / name
    model = train(cfg, run_dir, resume=args.resume)
    if not init_distributed(cfg.train.device).is_main:
        return
    print(f"trained {cfg.train.steps} steps in {run_dir}")
    if args.eval == "none":
        print(f"evaluation skipped (--eval none); run: ndm eval {run_dir}")
        return
    metrics = _report(model, load_run_config(run_dir) if args.resume else cfg, run_dir, args.eval)
    print(_summary(metrics))


def _sample(args: argparse.Namespace) -> None:
    method = f"-{args.method}" if args.sampler == "ode" else ""
    out = Path(args.out or Path(args.run) / f"samples-{args.sampler}{method}-{args.steps}.png")
    if out.suffix != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    needed = {(Path(args.run) / name).resolve() for name in RUN_FILES}
    for path in (out, out.with_suffix(".pt")):
        if path.resolve() in needed:
            raise ValueError(
                f"--out would overwrite {path}, which the run needs; choose another name"
            )
    cfg, model = load_run(args.run, device=args.device)
    cfg = _moved_data(cfg, args.data_path)
    splits = load_data(cfg.data)
    options = {
        "ode": {"method": args.method, "rtol": args.rtol, "atol": args.atol},
        "ddim": {"eta": args.eta},
    }.get(args.sampler, {})
    generator = torch.Generator(next(model.parameters()).device).manual_seed(args.seed)
    if splits.is_image:
        samples, nfe = sample_images(
            model, splits, args.n, args.sampler, args.steps, generator, **options
        )
        test = model_input(splits.test[: args.n], splits, None, augment=False)
    else:
        result = model.sample(
            (args.n, *splits.shape),
            sampler=args.sampler,
            steps=args.steps,
            generator=generator,
            **options,
        )
        samples, nfe = result.sample.cpu(), result.nfe
    bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
    if bad:
        raise FloatingPointError(f"{bad} of {args.n} samples are not finite; nothing written")
    caption = f"{args.sampler}{method}, {args.steps} steps, NFE {nfe:g}"
    if splits.is_image:
        plot_image_samples(samples, test, out, caption=caption)
    else:
        plot_samples(samples, splits.test[: args.n], out, caption)
    tensor_path = out.with_suffix(".pt")
    atomic_write(tensor_path, lambda file: torch.save(samples, file))
    print(f"{args.n} samples, sampler {args.sampler}, {args.steps} steps: NFE {nfe}")
    print(f"wrote {out} and {tensor_path}")


def _eval(args: argparse.Namespace) -> None:
    run = Path(args.run)
    trained = read_run(run, device=args.device)
    cfg, model = trained.config, trained.model
    changes = {
        f.name: getattr(args, f.name)
        for f in fields(EvalConfig)
        if getattr(args, f.name, None) is not None
    }
    if changes.get("fid_weights"):
        changes["fid_weights"] = str(Path(changes["fid_weights"]).expanduser().resolve())
    cfg = _moved_data(replace(cfg, eval=replace(cfg.eval, **changes)), args.data_path)
    splits = load_data(cfg.data)
    check_evaluable(splits, cfg.eval)
    metrics = _record(_metrics(model, cfg, splits), cfg, trained.step)
    _log_evaluation(cfg, run, metrics, None)
    folder = run / EVALUATIONS
    folder.mkdir(exist_ok=True)
    path = _unused_path(folder, time.strftime("%Y%m%d-%H%M%S"), ".json")
    save_json(path, metrics)
    print(_summary(metrics))
    print(f"wrote {path}")


def _export(args: argparse.Namespace) -> None:
    path = export_run(args.run, args.out)
    print(f"wrote {path} and {path.with_name(DESCRIPTION)}; load with ndm.load_pretrained")


def _add_eval_overrides(parser: argparse.ArgumentParser) -> None:
    """One optional flag per evaluation setting; absent ones keep the run's value."""
    group = parser.add_argument_group("evaluation options (default: the run's own)")
    for f in fields(EvalConfig):
        choices = f.metadata["choices"]
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            choices=choices,
            default=argparse.SUPPRESS,
            metavar=None if choices else f.name.upper(),
            help=f.metadata["help"],
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``ndm`` argument parser with its four sub-commands."""
    parser = _Parser(prog="ndm", description="Neural Diffusion Models")
    commands = parser.add_subparsers(dest="command", required=True)
    positive_int, positive_float = _checked(int, POSITIVE), _checked(float, POSITIVE)
    shown = {"formatter_class": _DefaultsShown}

    train_p = commands.add_parser("train", help="train a model, then plot and evaluate it")
    train_p.add_argument(
        "--run-dir", type=Path, help="run folder (default: runs/<dataset>-<transform>-<time>)"
    )
    train_p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train_p.add_argument(
        "--config",
        type=Path,
        help="JSON (as RUN/config.json) or YAML config file; flags override it",
    )
    train_p.add_argument(
        "--eval",
        choices=EVAL_LEVELS,
        default="full",
        help="after training: full (figures and the configured evaluation), fast (figures, "
        f"{FAST_EVAL} test examples, tolerances 1e-3, no FID) or none (default: full)",
    )
    add_config_arguments(train_p, RunConfig)
    train_p.set_defaults(handler=_train)

    sample_p = commands.add_parser("sample", help="draw samples from a trained run", **shown)
    sample_p.add_argument("run", type=Path, help="run folder")
    sample_p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ode")
    sample_p.add_argument("--steps", type=positive_int, default=100, help="sampler steps")
    sample_p.add_argument("--n", type=positive_int, default=1000, help="number of samples")
    sample_p.add_argument(
        "--eta", type=_checked(float, CLOSED_UNIT_INTERVAL), default=0.0, help="DDIM noise scale"
    )
    sample_p.add_argument("--method", choices=ODE_METHODS, default="dopri5", help="ODE solver")
    sample_p.add_argument("--rtol", type=positive_float, default=1e-5, help="dopri5 rtol")
    sample_p.add_argument("--atol", type=positive_float, default=1e-5, help="dopri5 atol")
    sample_p.add_argument(
        "--seed", type=_checked(int, NON_NEGATIVE), default=0, help="seed of the draws"
    )
    sample_p.add_argument(
        "--out",
        type=Path,
        help="figure path, a .pt tensor beside it (default: RUN/samples-<sampler>[-<method>]"
        "-<steps>.png)",
    )
    sample_p.add_argument("--data-path", type=Path, help=DATA_PATH_HELP)
    sample_p.add_argument("--device", default="auto", help=DEVICE_HELP)
    sample_p.set_defaults(handler=_sample)

    eval_p = commands.add_parser("eval", help="test-set NLL and NELBO of a trained run", **shown)
    eval_p.add_argument("run", type=Path, help="run folder")
    eval_p.add_argument("--data-path", type=Path, help=DATA_PATH_HELP)
    eval_p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_eval_overrides(eval_p)
    eval_p.set_defaults(handler=_eval)

    export_p = commands.add_parser(
        "export", help="EMA weights (safetensors) and config of a run, for ndm.load_pretrained"
    )
    export_p.add_argument("run", type=Path, help="run folder")
    export_p.add_argument("out", type=Path, help="export folder (created; never overwritten)")
    export_p.set_defaults(handler=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_help()
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        args.handler(args)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"ndm {args.command}: error: {error}", file=sys.stderr)
        return 1
    except RunStopped as stopped:
        print(f"ndm {args.command}: {stopped}; continue it with --resume", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(f"ndm {args.command}: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
