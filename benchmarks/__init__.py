"""Benchmark suites (scripts reproducing benchmarks/RESULTS.md) and the `skutag bench` command."""
