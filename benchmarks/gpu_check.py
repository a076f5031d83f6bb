"""One check of every CUDA path of ndm, prepared to run in one go on one GPU (under 8 minutes).

Each row is pass or fail with its figure:

* a training step of the ``cifar10`` preset (global batch 128) for DDPM, NDM with each
  derivative, checkpointing and width of F, and the separable transform, discrete and
  continuous, fp32 and bf16: the per-example loss on the device against the CPU on a small
  batch with the same weights, times and noise, and the step's loss and gradient finite.
  Each model accumulates its step over the micro-batches that fit the device by the
  committed memory table (:mod:`benchmarks.gpu_memory`); running out of memory fails its
  row, and the check goes on;
* the NDM/DDPM step-time ratio of that preset at the same global batch (the paper: 2.3 on
  a V100; the aim: at most 2.0), timed alternately, with the full table of :mod:`step_time`
  (compiled columns too) and the micro-batches each model used;
* ``torchrun --nproc_per_node=1`` (NCCL on CUDA) against one plain process, same global batch;
* DDIM (10 steps), the ODE sampler and the ODE NLL on the device against the CPU, same
  weights and starting noise;
* a run stopped and resumed on the device against an uninterrupted one;
* the ``imagenet64`` preset training a few steps on a synthetic npz dataset, memory-mapped
  from its copy in a cache folder, whose images stay on the host and reach the device one
  micro-batch at a time.

Usage::

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.md   # on a CUDA GPU
    python -m benchmarks.gpu_check --device cpu --tiny                       # dry run (a test)
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_memory import fitting_micro_batch, read_table
from benchmarks.harness import report
from benchmarks.step_time import MODELS, build, make_step, step_table
from ndm.losses.likelihood import ode_nll
from ndm.losses.objectives import continuous_diffusion_integrand, discrete_diffusion_term
from ndm.runs.builders import build_model
from ndm.runs.checkpoint import load_checkpoint
from ndm.runs.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    read_config_file,
)
from ndm.runs.folder import METRICS, read_metrics
from ndm.runs.training import train
from ndm.sampling.samplers import get_sampler, time_grid

# tolerance of device against CPU (relative to the CPU value's scale), by precision
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}
TARGET_RATIO = 2.0
MEMORY_TABLE = Path(__file__).parent / "results" / "gpu_memory.md"


class Checks:
    """Rows ``(check, pass | fail, figure)``; a check that raises is a failure with its error."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def run(self, name: str, check: Callable[[], tuple[bool | None, str]]) -> None:
        """Run ``check``, which returns ``(passed, figure)``; ``passed`` ``None`` is a figure
        with no verdict (a GPU target measured on a CPU)."""
        began = time.perf_counter()
        try:
            passed, figure = check()
        except Exception as error:  # a failed check is a row of the table, not the end
            passed, figure = False, f"{type(error).__name__}: {str(error).splitlines()[0][:150]}"
            if torch.cuda.is_available():  # after running out of memory, the next row starts clean
                torch.cuda.empty_cache()
        verdict = "-" if passed is None else "pass" if passed else "FAIL"
        self.rows.append((name, verdict, figure))
        print(f"{name}: {self.rows[-1][1]} ({figure}; {time.perf_counter() - began:.1f} s)")

    def table(self) -> list[str]:
        lines = ["| check | result | figure |", "|---|---|---|"]
        return lines + [f"| {name} | {result} | {figure} |" for name, result, figure in self.rows]


def _relative_gap(device_value: torch.Tensor, cpu_value: torch.Tensor) -> float:
    scale = float(cpu_value.abs().max()) + 1e-12
    return float((device_value.float().cpu() - cpu_value).abs().max()) / scale


@functools.cache
def _memory_table() -> dict:
    """The committed memory table (:func:`benchmarks.gpu_memory.read_table`), read once."""
    return read_table(MEMORY_TABLE) if MEMORY_TABLE.exists() else {}


def micro_batches(
    arch: str, model_name: str, objective: str, batch: int, device: torch.device
) -> int:
    """The micro-batches per step of ``batch`` that fit ``device`` by the committed memory
    table (1 where it has no row of ``arch``). A model the table leaves out takes the row of
    NDM with the same objective, whose unchecked learned F takes the most memory."""
    table = _memory_table()
    key = (arch, model_name, objective)
    if key not in table:
        key = (arch, "NDM", objective)
    if key not in table:
        return 1
    memory = torch.cuda.get_device_properties(device).total_memory / 2**30
    row = table[key]
    fit = fitting_micro_batch(row["state MB"], row["per example MB"], row["rest MB"], memory)
    if fit is None:
        raise MemoryError(f"{model_name}, {objective}: one example does not fit {memory:.0f} GiB")
    return next(k for k in range(1, batch + 1) if batch % k == 0 and batch // k <= fit[0])


def step_agreement(
    arch: str, shape: tuple[int, ...], model_name: str, objective: str, precision: str,
    batch: int, device: torch.device,
) -> Callable[[], tuple[bool, str]]:  # fmt: skip
    """The per-example loss term on ``device`` against the CPU (same weights, times and
    noise), then one optimiser step of ``batch`` on ``device``, over the micro-batches that
    fit it (:func:`micro_batches`), with a finite loss and gradient."""

    def check() -> tuple[bool, str]:
        torch.manual_seed(0)
        cpu = build(arch, shape, MODELS[model_name], objective)
        on_device = build(arch, shape, MODELS[model_name], objective).to(device)
        on_device.load_state_dict(cpu.state_dict())
        generator = torch.Generator().manual_seed(1)
        x = torch.rand(4, *shape, generator=generator) * 2 - 1
        t = torch.rand(4, generator=generator) * 0.9 + 0.05
        noise = torch.randn(x.shape, generator=generator)

        def term(model, x, t, noise):
            if objective == "discrete":
                return discrete_diffusion_term(
                    model.process, model.predictor, x, t - 0.01, t, noise
                )
            return continuous_diffusion_integrand(model.process, model.predictor, x, t, noise)

        autocast = (
            torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else nullcontext()
        )
        expected = term(cpu, x, t, noise).detach()
        with autocast:
            got = term(on_device, x.to(device), t.to(device), noise.to(device)).detach()
        gap = _relative_gap(got, expected)
        big = torch.rand(batch, *shape, generator=generator).to(device) * 2 - 1
        parts = (
            micro_batches(arch, model_name, objective, batch, device)
            if device.type == "cuda"
            else 1
        )
        make_step(on_device, big, precision, parts)()
        finite = all(torch.isfinite(p).all() for p in on_device.parameters())
        figure = (
            f"relative gap {gap:.1e}, finite {finite}, {parts} micro-batches of {batch // parts}"
        )
        return gap <= TOLERANCE[precision] and finite, figure

    return check


def speed(args: Namespace, device: torch.device, case: tuple, lines: list[str]) -> Callable:
    """The step table of :mod:`step_time` for ``case`` (``--tiny``: DDPM and NDM alone),
    each model over the micro-batches that fit the device (:func:`micro_batches`); on CUDA
    it passes when NDM/DDPM <= 2.0 at the same global batch (on a CPU the figure has no
    verdict)."""

    def check() -> tuple[bool, str]:
        _, arch, _, batch = case
        models = ["DDPM", "NDM"] if args.tiny else list(MODELS)
        parts = {
            n: micro_batches(arch, n, "discrete", batch, device) if device.type == "cuda" else 1
            for n in models
        }
        options = Namespace(objectives=["discrete"], repeats=args.repeats, precision="fp32",
                            compile=device.type == "cuda", models=models, skip=[],
                            only=None, micro_batches=parts)  # fmt: skip
        table = step_table(options, device, [case])
        lines.extend(table)
        column = table[0].split(" | ").index("NDM / DDPM")
        ratio = float(table[-1].split(" | ")[column])
        passed = ratio <= TARGET_RATIO if device.type == "cuda" else None
        return passed, (
            f"NDM / DDPM step time {ratio:.2f} at global batch {batch} (paper 2.3, V100), "
            f"micro-batches DDPM {parts['DDPM']}, NDM {parts['NDM']}"
        )

    return check


def _run_config(
    arch: str, dataset: DataConfig, steps: int, batch: int, device: str, budget: str = "none"
) -> RunConfig:
    return RunConfig(
        dataset,
        ModelConfig(architecture=arch, objective="discrete", num_steps=100),
        TrainConfig(
            steps=steps,
            batch_size=batch,
            warmup_steps=1,
            checkpoint_every=steps,
            log_every=1,
            device=device,
            loggers="none",
            memory_budget=budget,
        ),  # fmt: skip
        EvalConfig(n_eval=2),
    )


def _max_gap(a: Path, b: Path) -> float:
    first, second = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    return max(float((first["ema"][k] - second["ema"][k]).abs().max()) for k in first["ema"]
               if first["ema"][k].is_floating_point())  # fmt: skip


def torchrun_agreement(folder: Path, device: str, arch: str) -> Callable:
    """``torchrun --nproc_per_node=1`` against a plain process, the same run."""

    def check() -> tuple[bool, str]:
        flags = ["train", "--dataset", "digits", "--architecture", arch, "--steps", "3",
                 "--batch-size", "16", "--warmup-steps", "1", "--device", device,
                 "--eval", "none", "--loggers", "none"]  # fmt: skip
        plain, launched = folder / "plain", folder / "torchrun"
        subprocess.run([sys.executable, "-m", "ndm.cli", *flags, "--run-dir", str(plain)],
                       check=True, capture_output=True)  # fmt: skip
        runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
        subprocess.run([*runner, "-m", "ndm.cli", *flags, "--run-dir", str(launched)],
                       check=True, capture_output=True)  # fmt: skip
        gap = _max_gap(plain, launched)
        return gap <= 1e-6, f"largest EMA weight gap {gap:.1e}"

    return check


def sampling_agreement(device: torch.device, arch: str) -> Callable:
    """DDIM and the ODE sampler of an image model, and the ODE NLL (exact divergence) of a
    2-D one, on ``device`` against the CPU."""

    def check() -> tuple[bool, str]:
        torch.manual_seed(0)
        cfg = ModelConfig(architecture=arch, objective="discrete", reverse_variance="posterior")
        cpu = build_model(cfg, (1, 8, 8)).eval()
        on_device = build_model(cfg, (1, 8, 8)).to(device).eval()
        on_device.load_state_dict(cpu.state_dict())
        z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        gaps = {}
        for name, options in (("ddim", {}), ("ode", {"rtol": 1e-5, "atol": 1e-5})):
            grid = time_grid(10)
            want = get_sampler(name)(cpu.process, cpu.predictor, z, grid, **options).sample
            got = get_sampler(name)(on_device.process, on_device.predictor, z.to(device),
                                    grid.to(device), **options).sample  # fmt: skip
            gaps[name] = _relative_gap(got, want)
        points = ModelConfig(hidden=64, depth=2)  # exact divergence: 2-D points
        cpu, on_device = build_model(points, (2,)), build_model(points, (2,)).to(device)
        on_device.load_state_dict(cpu.state_dict())
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
        want, _ = ode_nll(cpu.process, cpu.predictor, x, rtol=1e-5, atol=1e-5)
        got, _ = ode_nll(on_device.process, on_device.predictor, x.to(device), rtol=1e-5, atol=1e-5)
        gaps["nll"] = _relative_gap(got, want)
        return max(gaps.values()) <= 1e-3, ", ".join(f"{k} {v:.1e}" for k, v in gaps.items())

    return check


def resume_agreement(folder: Path, device: str, arch: str) -> Callable:
    """A run stopped at half its steps and resumed, against an uninterrupted one."""

    def check() -> tuple[bool, str]:
        whole, split = folder / "whole", folder / "split"
        cfg = _run_config(arch, DataConfig("digits"), 4, 16, device)
        train(cfg, whole)
        train(replace(cfg, train=replace(cfg.train, steps=2, checkpoint_every=2)), split)
        train(cfg, split, resume=True)
        gap = _max_gap(whole, split)
        return (
            gap <= 1e-6,
            f"largest EMA weight gap {gap:.1e} ({'bitwise' if gap == 0 else 'close'})",
        )

    return check


def write_imagenet_npz(folder: Path, side: int, count: int) -> None:
    """Synthetic downsampled-ImageNet batches: ``train_data_batch_1.npz`` and ``val_data.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train_data_batch_1.npz", count), ("val_data.npz", 8)):
        data = rng.integers(0, 256, (n, 3 * side * side), dtype=np.uint8)
        np.savez(folder / name, data=data, labels=rng.integers(1, 1001, n))


def imagenet_at_scale(folder: Path, device: str, side: int, arch: str, batch: int) -> Callable:
    def check() -> tuple[bool, str]:
        write_imagenet_npz(folder / "imagenet", side, 4 * batch)
        data = DataConfig(
            f"imagenet{side}", path=str(folder / "imagenet"), cache=str(folder / "cache")
        )
        budget = "auto" if device.startswith("cuda") else "none"  # micro-batches that fit
        began = time.perf_counter()
        cfg = _run_config(arch, data, 3, batch, device, budget)
        train(cfg, folder / "imagenet-run")
        seconds = time.perf_counter() - began
        line = read_metrics(folder / "imagenet-run" / METRICS)[-1]
        finite = all(math.isfinite(v) for v in line.values() if isinstance(v, float))
        parts = read_config_file(folder / "imagenet-run" / "config.json").train.grad_accum
        return finite, f"3 steps of batch {batch} ({parts} micro-batches) in {seconds:.1f} s"

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small networks and batches")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available here; --device cpu --tiny is the dry run")
    arch, shape, batch = ("cpu8", (1, 8, 8), 8) if args.tiny else ("cifar10", (3, 32, 32), 128)
    checks, speed_lines = Checks(), []
    precisions = ("fp32",) if args.tiny else ("fp32", "bf16")
    for model_name in MODELS:
        for objective in ("discrete", "continuous"):
            for precision in precisions:
                checks.run(f"step {arch}: {model_name}, {objective}, {precision}",
                           step_agreement(arch, shape, model_name, objective, precision, batch,
                                          device))  # fmt: skip
    case = (f"U-Net {arch}", arch, shape, batch)
    checks.run(f"step time {arch}, batch {batch}", speed(args, device, case, speed_lines))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = "cpu8"  # the 8x8 digits runs of the remaining checks
        checks.run("torchrun, 1 process", torchrun_agreement(folder, args.device, small))
        checks.run("sampling and ODE NLL", sampling_agreement(device, small))
        checks.run("stop and resume", resume_agreement(folder, args.device, small))
        side, big = (32, "cpu8") if args.tiny else (64, "imagenet64")
        checks.run(f"imagenet{side} preset {big}, host-side data",
                   imagenet_at_scale(folder, args.device, side, big, 8 if args.tiny else 64))  # fmt: skip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"# GPU check: {name}, torch {torch.__version__}", ""] + checks.table()
    lines += ["", "## Step time, timed alternately", ""] + speed_lines
    report("\n".join(lines), args.out)
    if any(result == "FAIL" for _, result, _ in checks.rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
