"""Experiments that answered their question; each module's first docstring line says which, and where
the answer is recorded. Kept runnable (`python -m benchmarks.experiments.NAME`) to reproduce it."""
