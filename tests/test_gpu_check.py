"""The GPU check's dry run: every check of ``benchmarks.gpu_check`` on the CPU, tiny."""

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.step_time import MODELS

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_and_passes(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--repeats", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    checks = [row for row in rows if row.count(" | ") == 2]
    assert len(checks) == 2 * len(MODELS) + 5, checks  # a step check per model and objective
    assert all(" | pass | " in row or "step time" in row for row in checks), checks
    assert "imagenet32 preset cpu8, host-side data | pass" in out.read_text()
