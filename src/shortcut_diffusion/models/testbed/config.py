"""``TrainTestbedConfig`` and ``EvalTestbedConfig``: the options of ``sdo train-testbed`` and ``sdo
eval-testbed`` (torch-free; the work itself is :mod:`.train`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Optional

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
"""``--video``'s defaults for the options still at the digits testbed's (the moving-digits model
trains in about 25 minutes of one CPU thread)."""


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
        line's; without it, those still at their defaults)."""
        return overlay(self, VIDEO_DEFAULTS if self.video else {}, given)

    def _check(self) -> None:
        if self.init is not None and not self.video:
            raise UsageError("--init continues a moving-digits model's training: it needs --video")
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
