"""Command line: ``ndm train``, ``ndm sample RUN``, ``ndm eval RUN`` and ``ndm export RUN OUT``.

``ndm`` with no command prints its help. Errors print one line to stderr and
return a non-zero exit code (2 for bad arguments, 1 otherwise). Training ends with the
run's ``metrics.json``; each ``ndm eval`` adds a record ``evals/<time>.json`` and changes
nothing else. Every record holds the checkpoint's step, the time, the data path and the
evaluation settings beside the metrics.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import NoReturn

import torch

from ndm.data.atomic import atomic_write, check_writable
from ndm.data.host_memory import require_memory
from ndm.evaluation.report import (
    EVAL_LEVELS,
    FAST_EVAL,
    draw_samples,
    log_evaluation,
    plot_drawn,
    record,
    report_run,
    run_metrics,
    summary,
)
from ndm.runs.config import (
    CLOSED_UNIT_INTERVAL,
    NON_NEGATIVE,
    POSITIVE,
    Check,
    EvalConfig,
    RunConfig,
    add_config_arguments,
    config_from_args,
    option_type,
    read_config_file,
    with_data_path,
)
from ndm.runs.distributed import init_distributed
from ndm.runs.export import DESCRIPTION, export_run
from ndm.runs.folder import (
    EVALUATIONS,
    RUN_FILES,
    load_run_config,
    read_run,
    save_evaluation,
)
from ndm.runs.guard import RunStopped
from ndm.runs.inputs import check_evaluable, require_test_points, trained_run_data
from ndm.runs.training import train
from ndm.sampling.samplers import ODE_METHODS, SAMPLERS

DATA_PATH_HELP = "where the run's dataset is now (default: the path it was trained from)"
DEVICE_HELP = "torch device (auto: a GPU if there is one)"


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


def _train(args: argparse.Namespace) -> None:
    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs the --run-dir of the run to continue")
    if args.resume and args.config is not None:
        raise ValueError("--config starts a run; --resume continues one with its own config")
    base = load_run_config(args.run_dir) if args.resume else None
    if args.config is not None:
        base = read_config_file(args.config)
    cfg = config_from_args(args, base)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    latent = "latent-" if cfg.latent.enabled else ""
    name = f"{cfg.data.dataset}-{latent}{cfg.model.transform}-{stamp}"
    run_dir = args.run_dir or Path("runs") / name
    if args.eval != "none":  # checked now, not after training
        require_test_points(cfg)
    model = train(cfg, run_dir, resume=args.resume)
    if not init_distributed(cfg.train.device).is_main:
        return
    print(f"trained {cfg.train.steps} steps in {run_dir}")
    if args.eval == "none":
        print(f"evaluation skipped (--eval none); run: ndm eval {shlex.quote(str(run_dir))}")
        return
    metrics = report_run(
        model, load_run_config(run_dir) if args.resume else cfg, run_dir, args.eval
    )
    print(summary(metrics))


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
    check_writable(out.parent, "the samples")
    trained = read_run(args.run, device=args.device)
    cfg, model = with_data_path(trained.config, args.data_path), trained.model
    splits = trained_run_data(trained, cfg)
    # the samples, the sampler's state and the plotted copy, float32
    require_memory(f"{args.n} samples", 4 * args.n * 4 * math.prod(splits.shape))
    options = {
        "ode": {"method": args.method, "rtol": args.rtol, "atol": args.atol},
        "ddim": {"eta": args.eta},
    }.get(args.sampler, {})
    generator = torch.Generator(next(model.parameters()).device).manual_seed(args.seed)
    samples, nfe, _ = draw_samples(
        model, splits, args.n, args.sampler, args.steps, generator, **options
    )
    bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
    if bad:
        raise FloatingPointError(f"{bad} of {args.n} samples are not finite; nothing written")
    plot_drawn(samples, splits, out, f"{args.sampler}{method}, {args.steps} steps, NFE {nfe:g}")
    tensor_path = out.with_suffix(".pt")
    atomic_write(tensor_path, lambda file: torch.save(samples, file))
    print(f"{args.n} samples, sampler {args.sampler}, {args.steps} steps: NFE {nfe:g}")
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
    cfg = with_data_path(replace(cfg, eval=replace(cfg.eval, **changes)), args.data_path)
    splits = trained_run_data(trained, cfg)
    check_evaluable(splits, cfg.eval)
    evals = run / EVALUATIONS
    check_writable(evals if evals.is_dir() else run, "the evaluation record")
    metrics = record(run_metrics(model, cfg, splits), cfg, trained.step)
    print(summary(metrics), flush=True)  # shown even if storing it fails
    log_evaluation(cfg, run, metrics, None)
    path = save_evaluation(run, metrics)
    print(f"wrote {path}")


def _export(args: argparse.Namespace) -> None:
    path = export_run(args.run, args.out)
    print(f"wrote {path} and {path.with_name(DESCRIPTION)}; load with ndm.load_pretrained")


#: Evaluation settings of the figures after training only, which ``ndm eval`` does not draw.
PLOT_ONLY = ("n_samples",)


def _add_eval_overrides(parser: argparse.ArgumentParser) -> None:
    """One optional flag per evaluation setting; absent ones keep the run's value."""
    group = parser.add_argument_group("evaluation options (default: the run's own)")
    for f in fields(EvalConfig):
        if f.name in PLOT_ONLY:
            continue
        choices = f.metadata["choices"]
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=option_type(f),
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
    sample_p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ode", help="sampler")
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


def _one_line_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    """A warning as one line of the command, without the source line Python would show."""
    print(f"ndm: warning: {message}", file=sys.stderr)


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
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
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
