"""Command line: ``ndm train``, ``ndm sample RUN`` and ``ndm eval RUN``.

``ndm`` with no command trains with the defaults. Errors print one line to stderr and
return a non-zero exit code (2 for bad arguments, 1 otherwise).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import torch

from ndm.checkpoint import atomic_write, save_json
from ndm.config import (
    NON_NEGATIVE,
    POSITIVE,
    Check,
    RunConfig,
    add_config_arguments,
    config_from_args,
)
from ndm.data.toy2d import entropy
from ndm.evaluation import evaluate
from ndm.model import NDM
from ndm.plots import plot_samples, plot_trajectories, plot_transform
from ndm.samplers import ODE_METHODS, SAMPLERS
from ndm.training import load_data, load_run, load_run_config, train

TRAJECTORY_STEPS = 50
TRANSFORM_POINTS = 2000


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
    lines = [
        f"test NLL   {metrics['nll']:.4f} +- {metrics['nll_stderr']:.4f} nats "
        f"({metrics['nll_bpd']:.4f} bits/dim, {metrics['nll_nfe']:.0f} NFE per batch)",
        f"test NELBO {metrics['nelbo']:.4f} +- {metrics['nelbo_stderr']:.4f} nats "
        f"({metrics['nelbo_bpd']:.4f} bits/dim; prior {metrics['nelbo_prior']:.4f}, "
        f"diffusion {metrics['nelbo_diffusion']:.4f}, "
        f"reconstruction {metrics['nelbo_reconstruction']:.4f})",
    ]
    if metrics["entropy"] is not None:
        lines.append(
            f"data entropy {metrics['entropy']:.4f} nats ({metrics['entropy_bpd']:.4f} bits/dim)"
        )
    return "\n".join(lines)


def _report(model: NDM, cfg: RunConfig, run_dir: Path) -> dict:
    """Write the figures and ``metrics.json`` of a trained run; return the metrics."""
    test_x = load_data(cfg.data)[1]
    dim = test_x.shape[1]
    generator = torch.Generator(cfg.train.device).manual_seed(cfg.train.seed)
    print(f"sampling {cfg.eval.n_samples} points along the ODE", file=sys.stderr)
    result = model.sample(
        (cfg.eval.n_samples, dim),
        sampler="ode",
        steps=TRAJECTORY_STEPS,
        generator=generator,
        method="dopri5",
        rtol=cfg.eval.rtol,
        atol=cfg.eval.atol,
        trajectory=True,
    )
    plot_samples(result.sample, test_x[: cfg.eval.n_samples], run_dir / "samples.png")
    plot_transform(model, test_x[:TRANSFORM_POINTS], run_dir / "transform.png")
    plot_trajectories(result.trajectory, run_dir / "trajectories.png")
    print(f"evaluating NLL and NELBO on {cfg.eval.n_eval} test points", file=sys.stderr)
    metrics = evaluate(model, test_x, cfg.eval, entropy(cfg.data.dataset))
    save_json(run_dir / "metrics.json", metrics)
    return metrics


def _train(args: argparse.Namespace) -> None:
    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs the --run-dir of the run to continue")
    base = load_run_config(args.run_dir) if args.resume else None
    cfg = config_from_args(args, base)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or Path("runs") / f"{cfg.data.dataset}-{cfg.model.transform}-{stamp}"
    model = train(cfg, run_dir, resume=args.resume)
    metrics = _report(model, cfg, run_dir)
    print(f"trained {cfg.train.steps} steps in {run_dir}")
    print(_summary(metrics))


def _sample(args: argparse.Namespace) -> None:
    out = Path(args.out or Path(args.run) / f"samples-{args.sampler}-{args.steps}.png")
    if out.suffix != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    cfg, model = load_run(args.run)
    test_x = load_data(cfg.data)[1]
    options = {
        "ode": {"method": args.method, "rtol": args.rtol, "atol": args.atol},
        "ddim": {"eta": args.eta},
    }.get(args.sampler, {})
    generator = torch.Generator().manual_seed(args.seed)
    result = model.sample(
        (args.n, test_x.shape[1]),
        sampler=args.sampler,
        steps=args.steps,
        generator=generator,
        **options,
    )
    plot_samples(result.sample, test_x[: args.n], out)
    tensor_path = out.with_suffix(".pt")
    atomic_write(tensor_path, lambda file: torch.save(result.sample, file))
    print(f"{args.n} samples, sampler {args.sampler}, {args.steps} steps: NFE {result.nfe}")
    print(f"wrote {out} and {tensor_path}")


def _eval(args: argparse.Namespace) -> None:
    cfg, model = load_run(args.run)
    eval_cfg = cfg.eval if args.n_eval is None else replace(cfg.eval, n_eval=args.n_eval)
    metrics = evaluate(model, load_data(cfg.data)[1], eval_cfg, entropy(cfg.data.dataset))
    save_json(Path(args.run) / "metrics.json", metrics)
    print(_summary(metrics))


def build_parser() -> argparse.ArgumentParser:
    """The ``ndm`` argument parser with its three sub-commands."""
    parser = _Parser(prog="ndm", description="Neural Diffusion Models on 2-D data")
    commands = parser.add_subparsers(dest="command", required=True)
    positive_int, positive_float = _checked(int, POSITIVE), _checked(float, POSITIVE)

    train_p = commands.add_parser("train", help="train a model, then plot and evaluate it")
    train_p.add_argument(
        "--run-dir", type=Path, help="run folder (default: runs/<dataset>-<transform>-<time>)"
    )
    train_p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    add_config_arguments(train_p, RunConfig)
    train_p.set_defaults(handler=_train)

    sample_p = commands.add_parser("sample", help="draw samples from a trained run")
    sample_p.add_argument("run", type=Path, help="run folder")
    sample_p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ode")
    sample_p.add_argument("--steps", type=positive_int, default=100, help="sampler steps")
    sample_p.add_argument("--n", type=positive_int, default=1000, help="number of samples")
    sample_p.add_argument(
        "--eta", type=_checked(float, NON_NEGATIVE), default=0.0, help="DDIM noise scale"
    )
    sample_p.add_argument("--method", choices=ODE_METHODS, default="dopri5", help="ODE solver")
    sample_p.add_argument("--rtol", type=positive_float, default=1e-5, help="dopri5 rtol")
    sample_p.add_argument("--atol", type=positive_float, default=1e-5, help="dopri5 atol")
    sample_p.add_argument("--seed", type=_checked(int, NON_NEGATIVE), default=0)
    sample_p.add_argument("--out", type=Path, help="figure path (a .pt tensor goes beside it)")
    sample_p.set_defaults(handler=_sample)

    eval_p = commands.add_parser("eval", help="test-set NLL and NELBO of a trained run")
    eval_p.add_argument("run", type=Path, help="run folder")
    eval_p.add_argument("--n-eval", type=positive_int, help="test points (default: the run's)")
    eval_p.set_defaults(handler=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["train", *argv]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        args.handler(args)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"ndm {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ndm {args.command}: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 130
    return 0
