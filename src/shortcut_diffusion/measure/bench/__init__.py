"""Benchmarks: cost per iteration vs steps (``sdo bench``)."""

from shortcut_diffusion.lazy import exports

__getattr__ = exports(__name__, {"BenchConfig": ".config", "run_bench": ".cost"})

__all__ = ["BenchConfig", "run_bench"]
