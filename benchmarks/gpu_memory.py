"""Memory of a training step at the GPU presets, measured on the CPU and scaled per example.

For each preset (``cifar10``, ``imagenet32``, ``imagenet64``) and model (DDPM; NDM with a
learned F in discrete and continuous time, each derivative, with and without activation
checkpointing; F at half width; the separable transform), the peak memory growth of one
fp32 step (:func:`benchmarks.step_time.peak_memory`: the resident set's peak in a fresh
process, after a warm-up step) at micro-batches of 2 and 4 examples gives the memory per
example ``e`` and the rest ``c``. With the training state (parameters, EMA, gradients and
AdamW's moments: 5 x the parameters' bytes) a micro-batch of ``m`` needs
``state + c + m e``; the table gives the largest micro-batch (dividing the paper's global
batch of 128) that fits ``HEADROOM`` of an 80 GiB device (:mod:`ndm.runs.memory`) and the
accumulation steps the global batch then needs. A GPU holds the same tensors; its
allocator and cuDNN workspaces add to them, which the headroom is for.

:func:`read_table` reads the committed table back for :mod:`benchmarks.gpu_check`. Usage::

    python -m benchmarks.gpu_memory --out benchmarks/results/gpu_memory.md \
        --summary benchmarks/results/gpu_memory_summary.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.harness import environment, markdown_table, report
from benchmarks.step_time import MODELS, build, peak_memory
from ndm.data.host_memory import GIB
from ndm.runs.memory import HEADROOM, micro_batches_to_fit

PRESETS = {"cifar10": (3, 32, 32), "imagenet32": (3, 32, 32), "imagenet64": (3, 64, 64)}
#: The models of the table, each (name in step_time's MODELS, objective); discrete time
#: takes no dF/dt, so its rows do not vary the derivative.
ROWS = [
    ("DDPM", "discrete"),
    ("NDM", "discrete"),
    ("NDM, checkpointed", "discrete"),
    ("NDM, checkpointed with calls", "discrete"),
    ("NDM, F at 1/2 width", "discrete"),
    ("DDPM", "continuous"),
    ("NDM", "continuous"),
    ("NDM, checkpointed", "continuous"),
    ("NDM, checkpointed with calls", "continuous"),
    ("NDM, double backward", "continuous"),
    ("NDM, double backward, checkpointed", "continuous"),
    ("NDM, F at 1/2 width", "continuous"),
    ("NDM, separable", "continuous"),
]
GLOBAL_BATCH = 128  # the paper's
CPU = torch.device("cpu")
DEVICE_GIB = 80
PROBE_BATCHES = (2, 4)
HEADER = [
    "preset", "model", "objective", "peak growth at 2, MB", "at 4, MB", "per example MB",
    "per example / DDPM", "state GB", f"micro-batch for {DEVICE_GIB} GiB",
    f"accumulation for {GLOBAL_BATCH}",
]  # fmt: skip


def fitting_micro_batch(
    state: float, per_example: float, rest: float, memory_gib: float
) -> tuple[int, int] | None:
    """``(micro-batch, accumulation steps)`` for :data:`GLOBAL_BATCH` on a device of
    ``memory_gib`` (MB figures in, as in the table); ``None`` when one example does not fit."""
    mib = 2**20
    at_one, at_two = (rest + per_example) * mib, (rest + 2 * per_example) * mib
    try:
        k = micro_batches_to_fit(
            int(memory_gib * GIB), int(state * mib), int(at_one), int(at_two), GLOBAL_BATCH
        )
    except ValueError:
        return None
    return GLOBAL_BATCH // k, k


def measure(preset: str, name: str, objective: str, ddpm: dict) -> list[object]:
    """One row of the table (``ddpm``: DDPM's per-example MB by objective, filled in)."""
    shape = PRESETS[preset]
    variant = MODELS[name]
    small, large = (
        peak_memory(preset, shape, (variant, False), objective, b, "fp32", CPU, update=False)
        for b in PROBE_BATCHES
    )
    per_example = (large - small) / (PROBE_BATCHES[1] - PROBE_BATCHES[0])
    rest = max(small - PROBE_BATCHES[0] * per_example, 0.0)  # noise can make it negative
    model = build(preset, shape, variant, objective)
    state = 5 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    if name == "DDPM":
        ddpm[objective] = per_example
    fit = fitting_micro_batch(state, per_example, rest, DEVICE_GIB)
    return [
        preset, name, objective, f"{small:.0f}", f"{large:.0f}", f"{per_example:.0f}",
        f"{per_example / ddpm[objective]:.2f}", f"{state / 1024:.2f}",
        *(fit if fit else ("none fits", "-")),
    ]  # fmt: skip


def read_table(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """The committed table: ``(preset, model, objective)`` to its ``per example MB``,
    ``rest MB`` (peak growth at 2 less 2 examples, at least 0), ``state MB`` and its
    other cells by column name."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(HEADER) or cells[0] not in PRESETS:
            continue
        each = float(cells[5])
        rows[(cells[0], cells[1], cells[2])] = dict(zip(HEADER, cells, strict=True)) | {
            "per example MB": each,
            "rest MB": max(float(cells[3]) - PROBE_BATCHES[0] * each, 0.0),
            "state MB": float(cells[7]) * 1024,
        }
    return rows


def summary(path: Path, presets: tuple[str, ...] = ("cifar10", "imagenet64")) -> str:
    """The short version of the table at ``path``: per model of ``presets``, its memory per
    example against DDPM's and the micro-batch and accumulation for 80 GiB."""
    keep = ["per example / DDPM", HEADER[-2], HEADER[-1]]
    rows = [
        [preset, model, objective, *(cells[k] for k in keep)]
        for (preset, model, objective), cells in read_table(path).items()
        if preset in presets
    ]
    note = f"From `{path.name}` (the full table: its page under Results)."
    return "\n".join([note, "", *markdown_table(["preset", "model", "objective", *keep], rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--summary", type=Path, default=None,
                        help="write the short version of the --out table here")  # fmt: skip
    parser.add_argument("--summary-only", action="store_true",
                        help="only write the short version of the existing --out table")  # fmt: skip
    args = parser.parse_args()
    if args.summary_only:
        report(summary(args.out), args.summary)
        return
    rows: list[list[object]] = []
    intro = (
        f"Memory of one fp32 training step, measured on the CPU ({environment()}) at "
        f"micro-batches of {PROBE_BATCHES[0]} and {PROBE_BATCHES[1]} and scaled per example; "
        f"micro-batch: the largest dividing {GLOBAL_BATCH} whose step fits {HEADROOM:.0%} of "
        f"{DEVICE_GIB} GiB with the training state (5 x the parameters)."
    )
    for preset in args.presets:
        ddpm: dict[str, float] = {}
        for name, objective in ROWS:
            rows.append(measure(preset, name, objective, ddpm))
            print(rows[-1], flush=True)
            if args.out:  # kept as it grows: the imagenet64 rows take the longest
                args.out.write_text("\n".join([intro, "", *markdown_table(HEADER, rows)]) + "\n")
    report("\n".join([intro, "", *markdown_table(HEADER, rows)]), args.out)
    if args.out and args.summary:
        report(summary(args.out), args.summary)


if __name__ == "__main__":
    main()
