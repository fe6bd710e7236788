"""Benchmarks: cost per iteration vs steps (``sdo bench``)."""

from .cost import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
