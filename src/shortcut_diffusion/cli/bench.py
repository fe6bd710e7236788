"""``sdo bench``: cost per optimization iteration against sampling steps."""

from __future__ import annotations

import argparse
import sys

from shortcut_diffusion.measure.bench.config import BenchConfig
from shortcut_diffusion.options.parsing import from_args

COMMANDS = [
    ("bench", BenchConfig, "cost per optimization iteration vs sampling steps for every estimator and plain sampling "
                           "(one process per configuration): results.csv, report.md, cost_vs_steps.png"),
]


def run(args: argparse.Namespace) -> int:
    from shortcut_diffusion.measure.bench import run_bench

    config = from_args(BenchConfig, args)
    run_bench(config, command="sdo " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "sdo bench")
    if config.frames_grid:
        print(f"results: {config.out}/video_memory.json, report: {config.out}/video_memory.md")
        return 0
    print(f"results: {config.out}/results.csv, report: {config.out}/report.md, plot: {config.out}/cost_vs_steps.png")
    return 0
