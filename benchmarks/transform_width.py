"""What a narrower transform network costs and keeps: NDM with F at full, 1/2, 1/4 and 1/8
of the predictor's width, side by side.

Per width: NDM's lead over DDPM on Fashion-MNIST 16x16 at T = 10 (the paired NLL and NELBO
differences of :mod:`benchmarks.fashion_mnist`, read from its committed tables), and the
step-time and peak-memory ratios to DDPM of a discrete training step on the same ``cpu16``
U-Net at batch 128 (:func:`benchmarks.step_time.step_table`, timed alternately in this run).
Usage::

    python -m benchmarks.transform_width --out benchmarks/results/transform_width.md
"""

from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

import torch

from benchmarks.harness import markdown_cells, markdown_table, report
from benchmarks.step_time import CASES, step_table

#: Fashion-MNIST tables holding the T = 10 rows of each width, each with its own DDPM row
LEAD_TABLES = [
    Path(__file__).parent / "results" / name
    for name in ("fashion_mnist_width.md", "fashion_mnist_width_eighth.md")
]
WIDTHS = {
    "NDM": "full",
    "NDM, F at 1/2 width": "1/2",
    "NDM, F at 1/4 width": "1/4",
    "NDM, F at 1/8 width": "1/8",
}


def paired_leads(path: Path) -> dict[str, str]:
    """The paired ``NLL, NELBO`` differences against DDPM of each ``T = 10`` model of a
    Fashion-MNIST table, by model name."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header = markdown_cells(lines[0])
    column = next(i for i, name in enumerate(header) if name.startswith("paired"))
    leads = {}
    for line in lines[2:]:
        cells = markdown_cells(line)
        if len(cells) == len(header) and cells[0] == "10" and cells[column]:
            leads[cells[1]] = cells[column].removesuffix(" (DDPM)")
    return leads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    options = Namespace(objectives=["discrete"], repeats=args.repeats, precision="fp32",
                        compile=False, models=list(WIDTHS), skip=[], only=["cpu16"])  # fmt: skip
    steps = step_table(options, torch.device("cpu"), CASES)
    header, cells = markdown_cells(steps[0]), markdown_cells(steps[-1])
    leads = {name: lead for path in LEAD_TABLES for name, lead in paired_leads(path).items()}
    rows = [
        [width, leads[name], cells[header.index(f"{name} / DDPM")],
         cells[header.index(f"{name} peak / DDPM")]]
        for name, width in WIDTHS.items()
    ]  # fmt: skip
    intro = (
        "NDM with F narrower than the predictor: lead over DDPM on Fashion-MNIST 16x16, "
        "T = 10 (paired by image, bits/dim; from "
        f"{' and '.join(f'`{path.name}`' for path in LEAD_TABLES)}), and the ratios to DDPM "
        f"of a discrete training step of the cpu16 U-Net at batch {cells[2]} ("
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; the step table below)."
    )
    table = markdown_table(
        ["F width", "paired NLL, NELBO − DDPM", "step time / DDPM", "peak memory / DDPM"], rows
    )
    report("\n".join([intro, "", *table, "", *steps]), args.out)


if __name__ == "__main__":
    main()
