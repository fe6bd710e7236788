"""``sdo gradcheck``: every estimator's gradient against full backpropagation."""

from __future__ import annotations

import argparse
import json

from shortcut_diffusion.measure.gradcheck.config import GradcheckConfig
from shortcut_diffusion.options.parsing import from_args

COMMANDS = [
    ("gradcheck", GradcheckConfig, "compare every estimator's gradient with full backpropagation on the same noise: "
                                   "cosine, relative norm, network evaluations, bytes saved for backward, seconds"),
]


def run(args: argparse.Namespace) -> int:
    from shortcut_diffusion.measure.gradcheck.run import format_table, run_gradcheck

    config = from_args(GradcheckConfig, args)
    report = run_gradcheck(config)
    print(json.dumps(report) if config.json else format_table(report))
    return 0
