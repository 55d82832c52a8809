"""Benchmarks: ``python -m benchmarks.bench_<name>`` prints a table."""
