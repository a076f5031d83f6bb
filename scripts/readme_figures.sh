#!/usr/bin/env bash
# The README's figures, in docs/figures/: the run of `make demo` (an NDM on the checkerboard,
# the built-in default, evaluated in full) and an NDM trained on the built-in digits
# (configs/digits-discrete.json for 800 steps of batch 64, evaluated fast). About 12 and 10
# minutes on 2 CPU cores.
#
#   bash scripts/readme_figures.sh                 # both, after `make setup`
#   bash scripts/readme_figures.sh digits          # or one of: checkerboard digits
set -euo pipefail
cd "$(dirname "$0")/.."
ndm=${NDM:-.venv/bin/ndm}
runs=runs/readme-figures-$(date +%Y%m%d-%H%M%S)
out=docs/figures
mkdir -p "$out"

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(checkerboard digits)
for part in "${parts[@]}"; do
    case $part in
        checkerboard)
            "$ndm" train --run-dir "$runs/checkerboard"
            for figure in samples transform trajectories; do
                cp "$runs/checkerboard/$figure.png" "$out/checkerboard-$figure.png"
            done ;;
        digits)
            "$ndm" train --config configs/digits-discrete.json --steps 800 --batch-size 64 \
                --run-dir "$runs/digits" --eval fast
            for figure in samples transform predictions; do
                cp "$runs/digits/$figure.png" "$out/digits-$figure.png"
            done ;;
        *) echo "unknown part '$part': expected checkerboard or digits" >&2; exit 2 ;;
    esac
done
echo "figures of $runs written to $out"
