"""Training-step time and memory of NDM (learned transform) against DDPM (``F = x``).

Both models share network size, batch and objective; their steps are timed alternately in
one process (forward, backward and an Adam update), so the NDM/DDPM ratio is measured under
the same conditions. Memory is the peak CUDA allocation on a GPU, and on a CPU the bytes of
tensors saved for the backward pass (the part of a step's memory that grows with the batch).
NDM runs with each way the library takes ``dF/dt`` in training (``torch.func.jvp``, the
default, and the double-backward trick) and with the separable transform, whose network does
not see the time. A second table times three ways of getting
``(F, dF/dt)`` of the learned transform with a backward pass through both, with the bytes
each saves: ``torch.func.jvp``, ``torch.autograd.forward_ad`` dual numbers and the
double-backward trick. A third times the clipping of NDM's gradients
(``ndm.runs.training.clip_gradients``) over all parameters against over ``phi`` and ``theta``
apart, beside the discrete training step it follows. Usage::

    python -m benchmarks.step_time                      # CPU: MLP and the U-Net presets
    python -m benchmarks.step_time --device cuda --precision bf16
    python -m benchmarks.step_time --compile            # adds torch.compile columns
    python -m benchmarks.step_time --only cpu28 --skip "NDM, double backward"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from benchmarks.harness import report
from ndm.diffusion.transforms import LearnedTransform
from ndm.models.ndm import NDM
from ndm.runs.builders import apply_checkpointing, build_model
from ndm.runs.config import ModelConfig
from ndm.runs.optim import clip_gradients

# name, architecture, example shape, batch
CASES = [
    ("MLP 256x3, 2-D", "mlp", (2,), 512),
    ("U-Net cpu8, 8x8", "cpu8", (1, 8, 8), 128),
    ("U-Net cpu16, 16x16", "cpu16", (1, 16, 16), 128),
    ("U-Net cpu28, 28x28", "cpu28", (1, 28, 28), 128),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def saved_tensor_bytes(total: list[int]):
    """Add to ``total[0]`` the bytes of every tensor autograd saves for backward."""

    def pack(t: Tensor) -> Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def make_step(
    model: NDM, x: Tensor, precision: str, micro_batches: int = 1, update: bool = True
) -> Callable[[], None]:
    """One optimiser step on ``x``, its gradient accumulated over ``micro_batches`` equal
    parts (each loss divided by their number, as in training); without ``update``, only
    the forward and backward passes."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else nullcontext()
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for part in x.chunk(micro_batches):
            with autocast:
                loss = model(part)["loss"].mean() / micro_batches
            loss.backward()
        if update:
            optimizer.step()

    return step


def saved_bytes(model: NDM, x: Tensor, precision: str) -> int:
    """The bytes of the tensors one step saves for its backward pass (a view counts as
    its own tensor)."""
    step = make_step(model, x, precision)
    total = [0]
    with saved_tensor_bytes(total):
        step()
    return total[0]


def _peak_growth(
    arch: str, shape: tuple[int, ...], spec: tuple, objective: str, batch: int, precision: str,
    device: torch.device, micro_batches: int = 1, update: bool = True,
) -> float:  # fmt: skip
    """MB by which one step at ``batch`` (``update``: with the optimiser's) raises this process's peak memory over what it
    holds before the step, after a warm-up step at batch 1 (weights, gradients and Adam's
    state are then in place): the peak CUDA allocation, or the peak resident set size
    (Linux's ``VmHWM``, reset before the step)."""
    variant, compiled = spec
    torch.manual_seed(0)
    model = build(arch, shape, variant, objective).to(device)
    if compiled:
        model.compile()
    make_step(model, torch.rand(1, *shape, device=device) * 2 - 1, precision)()
    x = torch.rand(batch, *shape, device=device) * 2 - 1
    step = make_step(model, x, precision, micro_batches, update)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from now
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) / 2**10


def _status_kib(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status``, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


#: glibc's malloc with a fixed mmap threshold: every allocation above 128 KiB is mapped on
#: its own and returned to the system when freed, so that the resident set follows the live
#: tensors and its peak is theirs, not that of freed memory malloc keeps for reuse.
UNPOOLED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def peak_memory(
    arch: str, shape: tuple[int, ...], spec: tuple, objective: str, batch: int, precision: str,
    device: torch.device, micro_batches: int = 1, update: bool = True,
) -> float:  # fmt: skip
    """:func:`_peak_growth` of one step, measured in a fresh process on a CPU (where the
    resident set's peak is the process's, so each model needs its own), in this one on a
    GPU."""
    if device.type == "cuda":
        return _peak_growth(
            arch, shape, spec, objective, batch, precision, device, micro_batches, update
        )
    probe = [arch, list(shape), [list(spec[0]), spec[1]], objective, batch, precision]
    probe = json.dumps(probe + [micro_batches, update])
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.step_time", "--peak-probe", probe],
        capture_output=True, text=True, check=False,
        env=os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())} | UNPOOLED_MALLOC,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"peak memory probe failed: {done.stderr[-1000:]}")
    return float(done.stdout.split()[-1])


def time_alternately(
    steps: dict[str, Callable[[], None]],
    repeats: int,
    device: torch.device,
    first: dict | None = None,
) -> dict:
    """Median seconds per call of each function, calls interleaved, after one warm-up call
    each (whose seconds, compilation included, go into ``first``)."""
    for name, step in steps.items():
        began = time.perf_counter()
        step()
        _sync(device)
        if first is not None:
            first[name] = time.perf_counter() - began
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            began = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


class Variant(NamedTuple):
    """A model of the step table: its transform, how ``dF/dt`` is taken, what is
    checkpointed, and the width of F's network relative to the predictor's."""

    transform: str
    derivative: str = "jvp"
    checkpointing: str = "none"
    width: float = 1.0


MODELS = {
    "DDPM": Variant("identity"),
    "NDM": Variant("learned"),
    "NDM, double backward": Variant("learned", "double_backward"),
    "NDM, checkpointed": Variant("learned", checkpointing="all"),
    "NDM, double backward, checkpointed": Variant("learned", "double_backward", "all"),
    "NDM, checkpointed with calls": Variant("learned", checkpointing="all_calls"),
    "NDM, F at 1/2 width": Variant("learned", width=0.5),
    "NDM, F at 1/4 width": Variant("learned", width=0.25),
    "NDM, F at 1/8 width": Variant("learned", width=0.125),
    "NDM, separable": Variant("separable"),
}


def build(arch: str, shape: tuple[int, ...], variant: Variant, objective: str) -> NDM:
    cfg = ModelConfig(
        transform=variant.transform,
        architecture=arch,
        objective=objective,
        transform_derivative=variant.derivative,
        transform_width=variant.width,
        reverse_variance="posterior",  # one output per network, as in the committed tables
    )
    model = build_model(cfg, shape)
    apply_checkpointing(model, variant.checkpointing)
    return model


def variants(args: argparse.Namespace) -> dict[str, tuple[Variant, bool]]:
    """name: (variant, compiled) of every model the step table times: ``--models`` but
    ``--skip``; with ``--compile``, each also compiled (but those whose backward pass runs
    a double backward or a checkpoint, which do not run through a compiled network), timed
    in the same run as the eager ones."""
    names = ["DDPM"] + [n for n in args.models if n != "DDPM" and n not in args.skip]
    out = {n: (MODELS[n], False) for n in names}
    if args.compile:
        out |= {
            f"{n}, compiled": (MODELS[n], True)
            for n in names
            if MODELS[n].derivative != "double_backward" and MODELS[n].checkpointing == "none"
        }
    return out


def step_table(
    args: argparse.Namespace, device: torch.device, cases: list[tuple] = CASES
) -> list[str]:
    """The step-time table of ``cases`` ``(name, architecture, example shape, batch)``: each
    model's seconds per step and ratio to DDPM's; its peak memory (:func:`peak_memory`) and
    its ratio to DDPM's; and the bytes it saves for the backward pass (of one micro-batch). A model named in
    ``args.micro_batches`` (if any) accumulates its step over that many micro-batches, and
    the table then gives them in its last column."""
    specs = variants(args)
    micro = {
        n: getattr(args, "micro_batches", {}).get(n.removesuffix(", compiled"), 1) for n in specs
    }
    others = [name for name in specs if name != "DDPM"]
    compiled = [name for name, spec in specs.items() if spec[1]]
    columns = ["DDPM s/step", "DDPM peak MB"]
    columns += [f"{n} s/step | {n} / DDPM | {n} peak MB | {n} peak / DDPM" for n in others]
    columns += [f"{n} saved MB" for n in specs]
    columns += [f"{n} compile + first step s" for n in compiled]
    columns += ["micro-batches"] if max(micro.values()) > 1 else []
    header = "| network | objective | batch | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    for name, arch, shape, batch in cases:
        if args.only and arch not in args.only:
            continue
        for objective in args.objectives:
            peak = {  # first, each in a fresh process, before this one holds the models
                k: peak_memory(
                    arch, shape, spec, objective, batch, args.precision, device, micro[k]
                )
                for k, spec in specs.items()
            }
            torch.manual_seed(0)
            x = torch.rand(batch, *shape, device=device) * 2 - 1
            models = {}
            for k, (variant, compile_it) in specs.items():
                models[k] = build(arch, shape, variant, objective).to(device)
                if compile_it:
                    models[k].compile()
            steps = {k: make_step(m, x, args.precision, micro[k]) for k, m in models.items()}
            first: dict[str, float] = {}
            seconds = time_alternately(steps, args.repeats, device, first)
            saved = {  # of one micro-batch
                k: saved_bytes(m, x[: batch // micro[k]], args.precision) / 2**20
                for k, m in models.items()
            }
            cells = [f"{seconds['DDPM']:.4f}", f"{peak['DDPM']:.0f}"]
            for n in others:
                cells += [f"{seconds[n]:.4f}", f"{seconds[n] / seconds['DDPM']:.2f}"]
                cells += [f"{peak[n]:.0f}", f"{peak[n] / peak['DDPM']:.2f}"]
            cells += [f"{saved[n]:.1f}" for n in specs]
            cells += [f"{first[n]:.1f}" for n in compiled]
            if max(micro.values()) > 1:
                cells.append(", ".join(f"{n} {micro[n]}" for n in specs))
            lines.append(f"| {name} | {objective} | {batch} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return lines


def derivative_by_forward_ad(transform: LearnedTransform, x: Tensor, t: Tensor):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = transform.value(x, fwAD.make_dual(t, torch.ones_like(t)))
        primal, tangent = fwAD.unpack_dual(out)
    return primal, tangent


def _with_method(derivative: str) -> Callable:
    def value_and_derivative(transform: LearnedTransform, x: Tensor, t: Tensor):
        transform.derivative = derivative
        return transform(x, t)

    return value_and_derivative


def _value_and_derivative_step(
    strategy: Callable, transform: LearnedTransform, x: Tensor, t: Tensor, keep: list
) -> Callable[[], None]:
    """One call of ``strategy`` and a backward pass through ``F`` and ``dF/dt``; the
    derivative is kept for comparison, and the bytes saved for the backward pass."""

    def call() -> None:
        saved = [0]
        try:
            with saved_tensor_bytes(saved):
                value, derivative = strategy(transform, x, t)
                loss = value.square().sum() + derivative.square().sum()
            loss.backward()
            keep[:] = [derivative.detach(), saved[0]]
        except RuntimeError as error:  # reported in the table instead of the time
            keep[:] = [error]

    return call


def derivative_table(args: argparse.Namespace, device: torch.device) -> list[str]:
    strategies = {
        "torch.func.jvp": _with_method("jvp"),
        "forward_ad": derivative_by_forward_ad,
        "double backward": _with_method("double_backward"),
    }
    header = (
        "| network | batch | "
        + " | ".join(f"{s} s | {s} MB" for s in strategies)
        + " | max abs diff |"
    )
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    for name, arch, shape, batch in CASES:
        if args.only and arch not in args.only:
            continue
        torch.manual_seed(0)
        transform = build(arch, shape, MODELS["NDM"], "continuous").process.transform.to(device)
        for p in transform.parameters():  # leave the zero initialisation: F != x
            if not p.any():
                torch.nn.init.normal_(p, std=0.02)
        x = torch.rand(batch, *shape, device=device) * 2 - 1
        t = torch.rand(batch, device=device)

        kept = {k: [] for k in strategies}
        seconds = time_alternately(
            {
                k: _value_and_derivative_step(s, transform, x, t, kept[k])
                for k, s in strategies.items()
            },
            args.repeats,
            device,
        )
        reference = kept["torch.func.jvp"][0]
        works = [k for k in strategies if isinstance(kept[k][0], Tensor)]
        diff = max(float((kept[k][0] - reference).abs().max()) for k in works)
        cells = [
            f"{seconds[k]:.4f} | {kept[k][1] / 2**20:.1f}" if k in works else "fails | -"
            for k in strategies
        ]
        lines.append(f"| {name} | {batch} | " + " | ".join(cells) + f" | {diff:.1e} |")
        print(lines[-1], flush=True)
    return lines


def clipping_table(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Seconds of NDM's discrete training step and of clipping its gradients (max norm 1)
    over all parameters or over ``phi`` and ``theta`` apart, timed alternately."""
    header = "| network | batch | step s | clip over all s | clip apart s | (apart - all) / step |"
    lines = [header, "|---|---|---|---|---|---|"]
    for name, arch, shape, batch in CASES:
        if args.only and arch not in args.only:
            continue
        torch.manual_seed(0)
        model = build(arch, shape, MODELS["NDM"], "discrete").to(device)
        x = torch.rand(batch, *shape, device=device) * 2 - 1
        calls = {
            "step": make_step(model, x, args.precision),  # leaves the gradients to clip
            "all": lambda model=model: clip_gradients(model, 1.0),
            "apart": lambda model=model: clip_gradients(model, 1.0, apart=True),
        }
        seconds = time_alternately(calls, args.repeats, device)
        share = (seconds["apart"] - seconds["all"]) / seconds["step"]
        lines.append(
            f"| {name} | {batch} | {seconds['step']:.4f} | {seconds['all']:.5f} | "
            f"{seconds['apart']:.5f} | {share:.4f} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--objectives", nargs="+", default=["continuous", "discrete"])
    parser.add_argument("--only", nargs="*", help="architectures to keep (mlp, cpu8, ...)")
    parser.add_argument("--compile", action="store_true", help="also time each model compiled")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="the models of the step table (DDPM always)")  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[], choices=[n for n in MODELS if n != "DDPM"],
                        help="NDM variants left out (e.g. where their memory does not fit)")  # fmt: skip
    parser.add_argument("--peak-probe", help=argparse.SUPPRESS)  # one peak measurement, JSON
    parser.add_argument("--tables", nargs="+", choices=("steps", "derivatives", "clipping"),
                        default=["steps", "derivatives", "clipping"])  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the tables here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.peak_probe:
        arch, shape, (variant, compiled), objective, batch, precision, *how = json.loads(
            args.peak_probe
        )
        spec = (Variant(*variant), compiled)
        print(_peak_growth(arch, tuple(shape), spec, objective, batch, precision, device, *how))
        return
    header = (
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads, {args.precision}, median of {args.repeats} "
        + "steps, timed alternately"
    )
    print(header)
    lines = [header, ""]
    if "steps" in args.tables:
        lines += ["# Training step: NDM against DDPM", ""] + step_table(args, device) + [""]
    if "derivatives" in args.tables:
        lines += ["# (F, dF/dt) of the learned transform, forward and backward", ""]
        lines += derivative_table(args, device) + [""]
    if "clipping" in args.tables:
        lines += ["# Clipping NDM's gradients: over all parameters or phi and theta apart", ""]
        lines += clipping_table(args, device)
    if args.out:
        report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
