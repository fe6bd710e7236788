"""``sdo guide``: training-free guidance (FreeDoM)."""

from __future__ import annotations

import argparse

from shortcut_diffusion.io.interrupts import Interrupted
from shortcut_diffusion.options.parsing import from_args
from shortcut_diffusion.tasks.guide.config import GuideConfig

COMMANDS = [
    ("guide", GuideConfig, "training-free guidance (FreeDoM): one sampling pass steered by the reward's gradient "
                           "through the predicted clean sample, the baseline for sdo latent without an optimization loop"),
]


def run(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.guide.run import describe, run_guide

    result, out = run_guide(from_args(args.config_cls, args))
    if result.interrupt:
        raise Interrupted(result.interrupt, f"kept the samples predicted after {result.network_calls} guided step(s) "
                                            f"in {out} (summary.json, final.safetensors)")
    print(describe(result, out))
    return 0
