"""Benchmark scripts (bench_*.py, each runnable on its own) and `make bench` (run.py)."""
