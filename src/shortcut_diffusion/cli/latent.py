"""``sdo latent`` and ``sdo demo``: optimize latents against a reward."""

from __future__ import annotations

import argparse

from shortcut_diffusion.io.interrupts import Interrupted
from shortcut_diffusion.options.parsing import from_args, given_options
from shortcut_diffusion.tasks.latent.config import DemoConfig, LatentConfig

COMMANDS = [
    ("demo", DemoConfig, "the main job on the bundled digits model: SDO turns generated 1s into 7s "
                         "(sdo latent with its defaults and --reward-augment translation, written to runs/demo)"),
    ("latent", LatentConfig, "optimize latents (initial noise, a warmed-up latent, or an inverted image) against a reward"),
]


def run(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.latent.run import describe, run_latent

    result, out = run_latent(from_args(args.config_cls, args), given_options(args.config_cls, args.argv))
    if result.interrupt:
        raise Interrupted(result.interrupt, f"kept the last good latents after {len(result.history)} iteration(s) "
                                            f"in {out} (summary.json, final.safetensors)")
    print(describe(result, out))
    return 0 if result.stopped is None else 1
