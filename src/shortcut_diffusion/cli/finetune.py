"""``sdo finetune``: align a model to a reward by fine-tuning through its sampler."""

from __future__ import annotations

import argparse
from pathlib import Path

from shortcut_diffusion.options.parsing import from_args, given_options
from shortcut_diffusion.tasks.finetune.config import FinetuneConfig

COMMANDS = [
    ("finetune", FinetuneConfig, "align a model to a reward by fine-tuning LoRA adapters, all weights or the "
                                 "conditioning embeddings through its sampler (any estimator; runs under "
                                 "accelerate launch)"),
]


def run(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.finetune import describe, run_finetune

    config = from_args(FinetuneConfig, args)
    if config.resume:  # the run's own options, unless given again (and then they must match)
        from shortcut_diffusion.tasks.finetune.resume import resumed_config

        config = resumed_config(config, given_options(FinetuneConfig, args.argv))
    summary = run_finetune(config)
    if summary:  # the main process prints; the others return empty summaries
        print(describe(summary, Path(config.out)))
    return 0
