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
allocator and cuDNN workspaces add to them, which the headroom is for. A model whose probe
would not fit this host is scaled instead: DDPM's memory per example on its preset times
the model's ratio to DDPM on the first preset (marked "scaled").

:func:`read_table` reads the committed table back for :mod:`benchmarks.gpu_check`. Usage::

    python -m benchmarks.gpu_memory --out benchmarks/results/gpu_memory.md \
        --summary benchmarks/results/gpu_memory_summary.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.harness import environment, markdown_cells, markdown_table, report
from benchmarks.step_time import MODELS, build, peak_memory
from ndm.data.host_memory import GIB, available_bytes
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
#: The share of the host's available memory a probe may plan to take.
HOST_SHARE = 0.75
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


def measure(preset: str, name: str, objective: str, ddpm: dict, ratios: dict) -> list[object]:
    """One row of the table. ``ddpm``: DDPM's per-example MB of this preset by objective;
    ``ratios``: each model's per-example ratio to DDPM on the first preset. A model whose
    probe would not fit this host (by those ratios) is not probed: its memory per example
    is DDPM's times its ratio, marked scaled."""
    shape, variant = PRESETS[preset], MODELS[name]
    model = build(preset, shape, variant, objective)
    state = 5 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    ratio = ratios.get((name, objective))
    host = available_bytes()
    if name != "DDPM" and ratio is not None and host is not None:
        per_example = ddpm[objective] * ratio
        held = 0.8 * state  # a probe holds the parameters, gradients and moments: no EMA
        if (held + PROBE_BATCHES[1] * per_example) * 2**20 > HOST_SHARE * host:
            fit = fitting_micro_batch(state, per_example, 0.0, DEVICE_GIB)
            return [
                preset, name, objective, "over host", "over host",
                f"{per_example:.0f} (scaled)", f"{ratio:.2f} (scaled)", f"{state / 1024:.2f}",
                *(fit if fit else ("none fits", "-")),
            ]  # fmt: skip
    small, large = (
        peak_memory(preset, shape, (variant, False), objective, b, "fp32", CPU, update=False)
        for b in PROBE_BATCHES
    )
    per_example = (large - small) / (PROBE_BATCHES[1] - PROBE_BATCHES[0])
    rest = max(small - PROBE_BATCHES[0] * per_example, 0.0)  # noise can make it negative
    if name == "DDPM":
        ddpm[objective] = per_example
    fit = fitting_micro_batch(state, per_example, rest, DEVICE_GIB)
    return [
        preset, name, objective, f"{small:.0f}", f"{large:.0f}", f"{per_example:.0f}",
        f"{per_example / ddpm[objective]:.2f}", f"{state / 1024:.2f}",
        *(fit if fit else ("none fits", "-")),
    ]  # fmt: skip


def _number(cell: str) -> float:
    """The number a cell starts with (``"6448 (scaled)"``: 6448); 0 for ``"over host"``."""
    try:
        return float(cell.split()[0])
    except ValueError:
        return 0.0


def _rows(path: Path) -> dict[tuple[str, str, str], list[str]]:
    """The rows of a table written by this module, by ``(preset, model, objective)``."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        cells = markdown_cells(line)
        if len(cells) == len(HEADER) and cells[0] in PRESETS:
            rows[(cells[0], cells[1], cells[2])] = cells
    return rows


def read_table(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """The committed table: ``(preset, model, objective)`` to its ``per example MB``,
    ``rest MB`` (peak growth at 2 less 2 examples, at least 0; 0 for a scaled row),
    ``state MB`` and its other cells by column name."""
    rows = {}
    for key, cells in _rows(path).items():
        each = _number(cells[5])
        rows[key] = dict(zip(HEADER, cells, strict=True)) | {
            "per example MB": each,
            "rest MB": max(_number(cells[3]) - PROBE_BATCHES[0] * each, 0.0),
            "state MB": _number(cells[7]) * 1024,
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
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the table here; its rows are kept, not measured again")  # fmt: skip
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
        f"{DEVICE_GIB} GiB with the training state (5 x the parameters). Presets: "
        f"{', '.join(args.presets)}. A row marked scaled would not fit this host at "
        f"{PROBE_BATCHES[1]} examples: its memory per example is DDPM's on its preset times its "
        f"ratio to DDPM on {args.presets[0]}."
    )
    kept = _rows(args.out) if args.out and args.out.exists() else {}
    ratios: dict[tuple[str, str], float] = {}
    for preset in args.presets:
        ddpm: dict[str, float] = {}
        for name, objective in ROWS:
            cells = kept.get((preset, name, objective))  # measured by an earlier invocation
            rows.append(cells or measure(preset, name, objective, ddpm, ratios))
            if cells and name == "DDPM":
                ddpm[objective] = _number(cells[5])
            if preset == args.presets[0]:
                ratios[(name, objective)] = _number(str(rows[-1][6]))
            print(rows[-1], flush=True)
            if args.out:  # kept as it grows: the imagenet64 rows take the longest
                args.out.write_text("\n".join([intro, "", *markdown_table(HEADER, rows)]) + "\n")
    report("\n".join([intro, "", *markdown_table(HEADER, rows)]), args.out)
    if args.out and args.summary:
        report(summary(args.out), args.summary)


if __name__ == "__main__":
    main()
