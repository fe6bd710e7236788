"""The ``sdo`` command: thin sub-commands over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from shortcut_diffusion.options.parsing import add_arguments, from_args, given_options
from shortcut_diffusion.errors import UsageError, WriteError
from shortcut_diffusion.io.interrupts import Interrupted, as_interrupted, interruptible


def _gradcheck(args: argparse.Namespace) -> int:
    from shortcut_diffusion.measure.gradcheck.run import GradcheckConfig, format_table, run_gradcheck

    config = from_args(GradcheckConfig, args)
    report = run_gradcheck(config)
    print(json.dumps(report) if config.json else format_table(report))
    return 0


def _latent(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.latent.run import describe, run_latent

    result, out = run_latent(from_args(args.config_cls, args))
    if result.interrupt:
        raise Interrupted(result.interrupt, f"kept the last good latents after {len(result.history)} iteration(s) "
                                            f"in {out} (summary.json, final.safetensors)")
    print(describe(result, out))
    return 0 if result.stopped is None else 1


def _guide(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.guide.run import describe, run_guide

    result, out = run_guide(from_args(args.config_cls, args))
    if result.interrupt:
        raise Interrupted(result.interrupt, f"kept the samples predicted after {result.network_calls} guided step(s) "
                                            f"in {out} (summary.json, final.safetensors)")
    print(describe(result, out))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from shortcut_diffusion.tasks.finetune import FinetuneConfig, describe, run_finetune

    config = from_args(FinetuneConfig, args)
    if config.resume:  # the run's own options, unless given again (and then they must match)
        from shortcut_diffusion.tasks.finetune.resume import resumed_config

        config = resumed_config(config, given_options(FinetuneConfig, args.argv))
    summary = run_finetune(config)
    if summary:  # the main process prints; the others return empty summaries
        print(describe(summary, Path(config.out)))
    return 0


def _train_testbed(args: argparse.Namespace) -> int:
    from shortcut_diffusion.models.testbed.train import TrainTestbedConfig, train_testbed

    train_testbed(from_args(TrainTestbedConfig, args))
    return 0


def _eval_testbed(args: argparse.Namespace) -> int:
    from shortcut_diffusion.models.loading import load_model
    from shortcut_diffusion.models.testbed.train import EvalTestbedConfig, evaluate_model

    config = from_args(EvalTestbedConfig, args)
    config.check()
    model = load_model(config.model)
    if model.family != "digits":
        raise UsageError(f"model {config.model!r} is not a digits testbed")
    report = evaluate_model(model, config.per_class, seed=config.seed, steps=config.steps, guidance=config.guidance)
    report["classifier_held_out_accuracy"] = model.info.get("classifier_held_out_accuracy")
    report["guidance"] = model.guidance_scale if config.guidance is None else config.guidance
    print(json.dumps(report, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from shortcut_diffusion.measure.bench import BenchConfig, run_bench

    config = from_args(BenchConfig, args)
    run_bench(config, command="sdo " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "sdo bench")
    print(f"results: {config.out}/results.csv, report: {config.out}/report.md, plot: {config.out}/cost_vs_steps.png")
    return 0


def _add(commands, name: str, config_cls: type, run: Callable, help: str) -> None:
    parser = commands.add_parser(name, help=help, description=help)
    add_arguments(parser, config_cls)
    parser.set_defaults(run=run, config_cls=config_cls)


def build_parser() -> argparse.ArgumentParser:
    # The configs only (torch-free): a command imports its heavy modules when it runs.
    from shortcut_diffusion import __version__
    from shortcut_diffusion.measure.bench.config import BenchConfig
    from shortcut_diffusion.tasks.finetune.config import FinetuneConfig
    from shortcut_diffusion.measure.gradcheck.config import GradcheckConfig
    from shortcut_diffusion.tasks.guide.config import GuideConfig
    from shortcut_diffusion.tasks.latent.config import DemoConfig, LatentConfig
    from shortcut_diffusion.models.testbed.config import EvalTestbedConfig, TrainTestbedConfig

    parser = argparse.ArgumentParser(prog="sdo", description="Shortcut Diffusion Optimization")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add(commands, "demo", DemoConfig, _latent,
         "the main job on the bundled digits model: SDO turns generated 1s into 7s "
         "(sdo latent with its defaults and --reward-augment translation, written to runs/demo)")
    _add(commands, "latent", LatentConfig, _latent,
         "optimize latents (initial noise, a warmed-up latent, or an inverted image) against a reward")
    _add(commands, "guide", GuideConfig, _guide,
         "training-free guidance (FreeDoM): one sampling pass steered by the reward's gradient through the "
         "predicted clean sample, the baseline for sdo latent without an optimization loop")
    _add(commands, "finetune", FinetuneConfig, _finetune,
         "align a model to a reward by fine-tuning LoRA adapters, all weights or the conditioning "
         "embeddings through its sampler (any estimator; runs under accelerate launch)")
    _add(commands, "gradcheck", GradcheckConfig, _gradcheck,
         "compare every estimator's gradient with full backpropagation on the same noise: cosine, "
         "relative norm, network evaluations, bytes saved for backward, seconds")
    _add(commands, "bench", BenchConfig, _bench,
         "cost per optimization iteration vs sampling steps for every estimator and plain sampling "
         "(one process per configuration): results.csv, report.md, cost_vs_steps.png")
    _add(commands, "train-testbed", TrainTestbedConfig, _train_testbed,
         "train the digits testbed (classifier and diffusion model, or --objective flow) from a seed")
    _add(commands, "eval-testbed", EvalTestbedConfig, _eval_testbed,
         "digits-FD, conditional accuracy and diversity of a testbed's samples (its own scheduler)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:  # answered without building the parser
        from shortcut_diffusion import __version__

        print(f"sdo {__version__}")
        raise SystemExit(0)  # as argparse's version action does
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with interruptible():  # Ctrl-C and SIGTERM: the runs save what they have, then one line
            return args.run(args)
    except UsageError as error:
        print(f"sdo: error: {error}", file=sys.stderr)
        return 2
    except WriteError as error:
        print(f"sdo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        interrupted = as_interrupted(error)
        print(f"sdo: {interrupted.message()}", file=sys.stderr)
        return interrupted.exit_code


if __name__ == "__main__":
    sys.exit(main())
