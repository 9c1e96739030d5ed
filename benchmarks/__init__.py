"""The benchmark suites behind benchmarks/RESULTS.md (see benchmarks/README.md); not installed.

`skutag bench`, the command users run, is part of the package: skutag.bench.
"""
