"""Benchmarks of ndm: each module is one benchmark, run from the repository's root as
``python -m benchmarks.NAME --out benchmarks/results/NAME.md``; :mod:`benchmarks.harness`
holds what they share."""
