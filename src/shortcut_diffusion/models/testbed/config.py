"""``TrainTestbedConfig`` and ``EvalTestbedConfig``: the options of ``sdo train-testbed`` and ``sdo
eval-testbed`` (torch-free; the work itself is :mod:`.train`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import (MAX_GUIDANCE, ModelOptions, Options, RunOptions, SamplingOptions,
                                               check_number, check_seed, overlay, redefault)

NORM_GROUPS = 8
"""The UNet's group-norm groups: every block width is a multiple of this."""

OBJECTIVES = ("diffusion", "flow")
"""``diffusion``: epsilon prediction on DDPM's cosine schedule, sampled with DDIM; ``flow``:
rectified flow (velocity prediction), sampled with the flow-matching Euler scheduler."""
VIDEO_DEFAULTS = {"out": "runs/moving-digits", "steps": 20000, "batch": 32, "warmup": 200, "lr": 2e-3, "channels": [32, 64, 64],
                  "eval_per_class": 10}
"""``--video``'s defaults for the options the user did not set (the moving-digits model trains in
about an hour of one CPU thread)."""


BUNDLED_MOVING = Path(__file__).parent / "weights" / "moving"
"""The bundled moving-digits model (``--model moving-digits``, ``--init moving-digits``)."""


def moving_directory(init: str) -> Path:
    """The directory ``--init`` names: ``moving-digits`` is the bundled model's."""
    return BUNDLED_MOVING if init == "moving-digits" else Path(init)


def moving_record(init: str) -> dict[str, Any]:
    """The ``testbed.json`` of the moving-digits model ``--init`` names; a directory without one
    is refused."""
    directory = moving_directory(init)
    try:
        record = json.loads((directory / "testbed.json").read_text())
        valid = "training" in record and {"channels", "layers_per_block"} <= set(record["network_config"])
    except (OSError, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise UsageError(f"--init {init}: no moving-digits model there (its testbed.json is missing or not one "
                         "sdo train-testbed --video wrote)")
    if not (directory / "network.safetensors").is_file():
        raise UsageError(f"--init {init}: network.safetensors is missing")
    return record


def _at_least(low: int, **values: int) -> None:
    """Each ``--name value`` is an integer >= ``low``."""
    for name, value in values.items():
        if value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


@dataclass
class TrainTestbedConfig(Options):
    out: str = field(default="runs/testbed", metadata={"help": "directory to save the model to"})
    overwrite: bool = field(default=False, metadata={"help": "replace a testbed sdo trained earlier in --out (only the files sdo wrote are removed)"})
    seed: int = field(default=0, metadata={"help": "seed of everything"})
    objective: str = field(default="diffusion", metadata={
        "help": "diffusion (epsilon prediction, DDIM) or flow (rectified flow, flow-matching Euler; reuses the "
                "bundled digits classifier and judge)", "choices": list(OBJECTIVES)})
    steps: int = field(default=12000, metadata={"help": "diffusion training steps"})
    batch: int = field(default=128, metadata={"help": "diffusion training batch size"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    warmup: int = field(default=300, metadata={"help": "learning-rate warm-up steps"})
    channels: list[int] = field(default_factory=lambda: [32, 64, 64], metadata={"help": "UNet block widths"})
    layers_per_block: int = field(default=1, metadata={"help": "UNet layers per block"})
    cond_dropout: float = field(default=0.15, metadata={"help": "probability of the null condition"})
    ema: float = field(default=0.999, metadata={"help": "EMA decay of the saved weights"})
    guidance: float = field(default=1.5, metadata={"help": "classifier-free guidance scale saved with the model"})
    classifier_epochs: int = field(default=60, metadata={"help": "classifier training epochs"})
    judge_epochs: int = field(default=150, metadata={"help": "held-out judge training epochs (0: no judge)"})
    classifier_noise: float = field(default=0.8, metadata={"help": "classifier inputs get Gaussian noise of std U(0, this)"})
    eval_per_class: int = field(default=100, metadata={"help": "samples per class for the final metrics (0: skip)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    video: bool = field(default=False, metadata={"help": "train the moving-digits video model (class and direction "
                                                         "conditioned; reuses the bundled digits classifier and judges); "
                                                         "its defaults: " + " ".join(f"--{k.replace('_', '-')} "
                                                         + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
                                                         for k, v in VIDEO_DEFAULTS.items())})
    init: Optional[str] = field(default=None, metadata={"help": "--video: start from a saved moving-digits model's "
                                                               "weights (a directory, or moving-digits for the "
                                                               "bundled one) and train on; its widths are kept, and "
                                                               "another --seed gives other draws than its run's"})

    def resolved(self, given: Optional[Collection[str]] = None) -> "TrainTestbedConfig":
        """With ``--video``, :data:`VIDEO_DEFAULTS` for the options not in ``given`` (the command
        line's; without it, those still at their defaults), and with ``--init`` its model's widths."""
        values = dict(VIDEO_DEFAULTS) if self.video else {}
        if self.video and self.init is not None:
            widths = moving_record(self.init)["network_config"]
            values.update(channels=list(widths["channels"]), layers_per_block=widths["layers_per_block"])
        return overlay(self, values, given)

    def init_training(self) -> list[dict[str, Any]]:
        """The training runs behind ``--init``'s weights, oldest first (each run's options, CPU time
        and final metrics), checked against this run: its widths, and an ``--out`` that is not the init's."""
        record = moving_record(self.init)
        widths = (list(record["network_config"]["channels"]), record["network_config"]["layers_per_block"])
        if widths != (list(self.channels), self.layers_per_block):
            raise UsageError(f"--init {self.init} has widths {' '.join(map(str, widths[0]))} and {widths[1]} layer(s) "
                             f"per block; give --channels {' '.join(map(str, widths[0]))} --layers-per-block {widths[1]}"
                             " or leave them out")
        if moving_directory(self.init).resolve() == Path(self.out).resolve():
            raise UsageError(f"--out {self.out} is --init's directory: write the continued model elsewhere")
        run = {key: record.get(key) for key in ("training", "train_cpu_seconds", "metrics")}
        return [*record.get("init_training", []), run]

    def _check(self) -> None:
        if self.init is not None and not self.video:
            raise UsageError("--init continues a moving-digits model's training: it needs --video")
        if self.init is not None:
            self.init_training()
        if self.video and self.objective != "diffusion":
            raise UsageError("--video trains a diffusion (DDIM) model; --objective flow is for the digits testbed")
        _at_least(1, steps=self.steps, batch=self.batch, layers_per_block=self.layers_per_block,
                  classifier_epochs=self.classifier_epochs)
        _at_least(0, warmup=self.warmup, judge_epochs=self.judge_epochs, eval_per_class=self.eval_per_class,
                  threads=self.threads)
        if not self.channels or any(c < NORM_GROUPS or c % NORM_GROUPS for c in self.channels):
            raise UsageError(f"--channels must be positive multiples of {NORM_GROUPS} (the UNet's group-norm groups), "
                             f"got {' '.join(map(str, self.channels))}")
        check_number("--lr", self.lr, low=0, strict=True)
        check_number("--cond-dropout", self.cond_dropout, low=0, high=1)
        check_number("--ema", self.ema, low=0, high=1)
        check_number("--guidance", self.guidance, low=0, high=MAX_GUIDANCE)
        check_number("--classifier-noise", self.classifier_noise, low=0)
        check_seed("--seed", self.seed)
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")


@dataclass
class EvalTestbedConfig(Options):
    model: str = redefault(ModelOptions, "model", "digits", help="digits, digits-flow, moving-digits (bundled) or a saved testbed directory")
    per_class: int = field(default=100, metadata={"help": "samples per class"})
    steps: int = redefault(SamplingOptions, "steps", 50,
                           help="sampling steps (the model's own scheduler: DDIM or flow-matching Euler)")
    guidance: Optional[float] = redefault(ModelOptions, "guidance", None)
    seed: int = redefault(RunOptions, "seed", 0, help="seed of the noise")

    def _check(self) -> None:
        _at_least(1, per_class=self.per_class, steps=self.steps)
        check_number("--guidance", self.guidance, low=0, high=MAX_GUIDANCE)
        check_seed("--seed", self.seed)
