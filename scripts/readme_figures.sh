#!/usr/bin/env bash
# The README's figures, in docs/figures/: the run of `make demo` (an NDM on the checkerboard,
# the built-in default, evaluated in full) and an NDM trained on the built-in digits
# (configs/digits-discrete.json, evaluated fast). About 15 minutes on 2 CPU cores.
#
#   bash scripts/readme_figures.sh            # after `make setup`
set -euo pipefail
cd "$(dirname "$0")/.."
ndm=${NDM:-.venv/bin/ndm}
runs=runs/readme-figures-$(date +%Y%m%d-%H%M%S)
out=docs/figures
mkdir -p "$out"

"$ndm" train --run-dir "$runs/checkerboard"
for figure in samples transform trajectories; do
    cp "$runs/checkerboard/$figure.png" "$out/checkerboard-$figure.png"
done

"$ndm" train --config configs/digits-discrete.json --run-dir "$runs/digits" --eval fast
for figure in samples transform predictions; do
    cp "$runs/digits/$figure.png" "$out/digits-$figure.png"
done
echo "figures of $runs written to $out"
