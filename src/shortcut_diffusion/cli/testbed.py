"""``sdo train-testbed`` and ``sdo eval-testbed``: the digits testbed from a seed, and its metrics."""

from __future__ import annotations

import argparse
import json

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.testbed.config import EvalTestbedConfig, TrainTestbedConfig
from shortcut_diffusion.options.parsing import from_args, given_options

COMMANDS = [
    ("train-testbed", TrainTestbedConfig, "train the digits testbed (classifier and diffusion model, or --objective flow) "
                                          "from a seed"),
    ("eval-testbed", EvalTestbedConfig, "digits-FD, conditional accuracy and diversity of a testbed's samples "
                                        "(its own scheduler)"),
]


def run(args: argparse.Namespace) -> int:
    return (_train if args.config_cls is TrainTestbedConfig else _evaluate)(args)


def _train(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.testbed import train_testbed

    train_testbed(from_args(TrainTestbedConfig, args), given=given_options(TrainTestbedConfig, args.argv))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from shortcut_diffusion.models.loading import load_model
    from shortcut_diffusion.tasks.testbed import evaluate_model

    config = from_args(EvalTestbedConfig, args)
    config.check()
    model = load_model(config.model)
    if model.family == "moving-digits":
        from shortcut_diffusion.models.testbed.moving.frames import evaluate_video_model

        if config.guidance is not None:
            model.guidance_scale = config.guidance
        report = evaluate_video_model(model, config.per_class, seed=config.seed, steps=config.steps)
    elif model.family != "digits":
        raise UsageError(f"model {config.model!r} is not a digits testbed")
    else:
        report = evaluate_model(model, config.per_class, seed=config.seed, steps=config.steps, guidance=config.guidance)
    report["classifier_held_out_accuracy"] = model.info.get("classifier_held_out_accuracy")
    report["guidance"] = model.guidance_scale if config.guidance is None else config.guidance
    print(json.dumps(report, indent=2))
    return 0
