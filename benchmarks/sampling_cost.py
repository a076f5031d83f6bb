"""What sampling and likelihood cost: sampler overhead, diffusers' loop, ODE NFE, NLL accuracy.

1. Seconds per step of each sampler, and the part of them spent inside the networks (the
   predictor, and for NDM the transform's network at ``x_hat``, the JVP of the learned one
   included), clocked around the networks' calls in the same runs; the rest is the
   sampler's overhead. NDM with the learned and with the separable transform.
2. The same accounting for our DDIM loop and diffusers' ``DDIMScheduler`` loop around the
   same network, with ``F = x`` and the schedule of diffusers' ``alphas_cumprod`` table.
3. The adaptive ODE sampler's NFE at several tolerances, NDM against DDPM.
4. ODE NLL (Hutchinson) time per example and error against a tighter reference (rtol =
   atol = 1e-4, 8 probes), for several tolerances and numbers of probes.

Tables 1 and 2 time untrained networks (time does not depend on the weights); 3 and 4 need
trained runs, given by ``--ndm-run`` and ``--ddpm-run`` (image runs, e.g. those of
``benchmarks.fashion_mnist``). Usage::

    python -m benchmarks.sampling_cost --ndm-run runs/fashion-mnist/learned-T1000 \\
        --ddpm-run runs/fashion-mnist/identity-T1000 --out benchmarks/results/sampling_cost.md
    python -m benchmarks.sampling_cost --tables overhead --out benchmarks/results/sampling_overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import report
from ndm.data.images import dequantise
from ndm.diffusion.schedules import TableVPSchedule
from ndm.models.ndm import NDM
from ndm.runs.builders import build_model
from ndm.runs.config import ModelConfig
from ndm.runs.folder import load_run
from ndm.runs.inputs import load_data
from ndm.sampling.samplers import get_sampler, time_grid

SHAPE = (1, 16, 16)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


class NetworkClock:
    """Seconds spent inside the ``forward`` of the wrapped networks (tangents of a JVP
    included, since they are computed in the same calls)."""

    def __init__(self, *networks: torch.nn.Module) -> None:
        self.seconds = 0.0
        for network in networks:
            network.forward = self._timed(network.forward)

    def _timed(self, forward: Callable) -> Callable:
        def timed(*args: object) -> object:
            began = time.perf_counter()
            out = forward(*args)
            self.seconds += time.perf_counter() - began
            return out

        return timed


def overhead_row(label: str, run: Callable[[], object], clock: NetworkClock, steps: int,
                 repeats: int) -> str:  # fmt: skip
    """``| label | s/step | network s/step | overhead |`` over ``repeats`` runs of ``run``:
    the overhead is the time outside the networks, relative to the time inside them."""
    run()
    clock.seconds, began = 0.0, time.perf_counter()
    for _ in range(repeats):
        run()
    total, inside = time.perf_counter() - began, clock.seconds
    per_step = 1 / (repeats * steps)
    return (
        f"| {label} | {total * per_step:.4f} | {inside * per_step:.4f} | "
        f"{100 * (total / inside - 1):+.1f}% |"
    )


@torch.no_grad()
def overhead_table(batch: int, steps: int, repeats: int) -> list[str]:
    lines = [
        f"| model, sampler | s/step (batch {batch}) | in the networks s/step | overhead |",
        "|---|---|---|---|",
    ]
    for label, transform in (
        ("DDPM", "identity"),
        ("NDM", "learned"),
        ("NDM, separable", "separable"),
    ):
        torch.manual_seed(0)
        model = build_model(ModelConfig(transform=transform, architecture="cpu16"), SHAPE)
        model.eval()
        networks = [model.predictor.net]
        if transform != "identity":
            networks.append(model.process.transform.net)
        clock = NetworkClock(*networks)
        z = torch.randn(batch, *SHAPE)
        for name in ("ddpm", "ddim", "sde", "ode"):
            sampler = get_sampler(name)
            options = {"method": "euler"} if name == "ode" else {}

            def run(sampler=sampler, options=options, model=model, z=z) -> None:
                sampler(model.process, model.predictor, z, time_grid(steps), **options)

            row_name = "ode (euler)" if name == "ode" else name
            lines.append(overhead_row(f"{label}, {row_name}", run, clock, steps, repeats))
            print(lines[-1], flush=True)
    return lines


@torch.no_grad()
def diffusers_table(batch: int, steps: int, repeats: int) -> list[str]:
    import diffusers

    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=False
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(transform="identity", architecture="cpu16"), SHAPE)
    schedule = TableVPSchedule(scheduler.alphas_cumprod)
    model.process.schedule = model.predictor.schedule = schedule
    network = model.predictor.net.eval()
    clock = NetworkClock(network)
    z = torch.randn(batch, *SHAPE)

    def theirs() -> None:
        scheduler.set_timesteps(steps)
        sample = z
        for k in scheduler.timesteps:
            time_k = torch.full((batch,), (int(k) + 1) / 1000)
            sample = scheduler.step(network(sample, time_k), k, sample).prev_sample

    ratio = 1000 // steps
    grid = torch.cat([(torch.arange(steps, 0, -1) * ratio - ratio + 1) / 1000, torch.zeros(1)])

    def ours() -> None:
        get_sampler("ddim")(model.process, model.predictor, z, grid)

    lines = [
        f"| DDIM loop, {steps} steps, batch {batch} | s/step | in the network s/step | overhead |",
        "|---|---|---|---|",
        overhead_row("ndm `ddim` sampler", ours, clock, steps, repeats),
        overhead_row("diffusers `DDIMScheduler` loop", theirs, clock, steps, repeats),
    ]
    print("\n".join(lines), flush=True)
    return lines


@torch.no_grad()
def nfe_table(models: dict[str, NDM], batch: int, tolerances: list[float]) -> list[str]:
    lines = [
        "| rtol = atol | " + " | ".join(f"{k} NFE" for k in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for tol in tolerances:
        nfes = []
        for model in models.values():
            z = torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(0))
            result = get_sampler("ode")(
                model.process, model.predictor, z, time_grid(1), rtol=tol, atol=tol
            )
            nfes.append(result.nfe)
        lines.append(f"| {tol:g} | " + " | ".join(str(n) for n in nfes) + " |")
        print(lines[-1], flush=True)
    return lines


def nll_table(model: NDM, x: torch.Tensor, tolerances: list[float], probes: list[int]) -> list[str]:
    dims = x[0].numel()
    began = time.perf_counter()
    reference, _ = model.nll(
        x, divergence="hutchinson", rtol=1e-4, atol=1e-4, num_probes=max(probes) * 2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    ref_seconds = time.perf_counter() - began
    lines = [
        f"Reference: rtol = atol = 1e-4 with {max(probes) * 2} probes "
        f"({ref_seconds / x.shape[0]:.2f} s per example).",
        "",
        "| rtol = atol | probes | s / example | NFE | mean abs error, bits/dim |",
        "|---|---|---|---|---|",
    ]
    for tol in tolerances:
        for k in probes:
            began = time.perf_counter()
            nll, nfe = model.nll(
                x, divergence="hutchinson", rtol=tol, atol=tol, num_probes=k,
                generator=torch.Generator().manual_seed(1),
            )  # fmt: skip
            seconds = (time.perf_counter() - began) / x.shape[0]
            error = float((nll - reference).abs().mean()) / (dims * 0.6931471805599453)
            lines.append(f"| {tol:g} | {k} | {seconds:.3f} | {nfe} | {error:.4f} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tables", nargs="+", choices=("overhead", "nfe", "nll"),
                        default=["overhead", "nfe", "nll"])  # fmt: skip
    parser.add_argument("--ndm-run", type=Path, default=None)
    parser.add_argument("--ddpm-run", type=Path, default=None)
    parser.add_argument("--nll-examples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, U-Net cpu16 on "
        f"16x16 images; {args.repeats} repeats."
    )
    lines = ["# Sampling and likelihood cost", "", header]
    if "overhead" in args.tables:
        lines += ["", "## Sampler overhead", ""]
        lines += overhead_table(args.batch, args.steps, args.repeats)
        lines += ["", "## Against diffusers", ""]
        lines += diffusers_table(args.batch, args.steps, args.repeats)
    if {"nfe", "nll"} & set(args.tables) and not (args.ndm_run and args.ddpm_run):
        parser.error("the nfe and nll tables need --ndm-run and --ddpm-run")
    if "nfe" in args.tables:
        models = {name: load_run(run)[1].eval() for name, run in
                  (("NDM", args.ndm_run), ("DDPM", args.ddpm_run))}  # fmt: skip
        lines += ["", f"## Adaptive ODE sampler (dopri5), {args.batch} samples", ""]
        lines += nfe_table(models, args.batch, [1e-2, 1e-3, 1e-4, 1e-5])
    if "nll" in args.tables:
        cfg, model = load_run(args.ndm_run)
        splits = load_data(cfg.data)
        x = dequantise(
            splits.test[: args.nll_examples], splits.num_levels, torch.Generator().manual_seed(0)
        )
        lines += ["", f"## ODE NLL of NDM on {args.nll_examples} test images", ""]
        lines += nll_table(model.eval(), x, [1e-2, 1e-3], [1, 4])
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
