"""``GuideConfig``: the options of ``sdo guide`` (torch-free; the run itself is :mod:`.guide`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import (ConditionOptions, ModelOptions, RewardOptions, RunOptions,
                                               SamplingOptions, check_number, redefault)

MAX_SCALE = 100.0
"""Each guided step moves the sample by ``scale`` times its noise level: far beyond 1 the reward's
gradient swamps the sample, and huge scales overflow it into non-finite values."""


@dataclass
class GuideConfig(RunOptions, RewardOptions, ConditionOptions, SamplingOptions, ModelOptions):
    reward: str = redefault(RewardOptions, "reward", "digit-class:7")
    cond: list[str] = redefault(ConditionOptions, "cond", ["1"])
    out: str = redefault(RunOptions, "out", "runs/guide")
    scale: float = field(default=0.2, metadata={"help": "guidance strength relative to the noise level (0: plain sampling)"})
    travel: int = field(default=1, metadata={"help": "FreeDoM's time travel: repeat each step of the window this many times"})
    travel_window: list[int] = field(default_factory=lambda: [0, 0], metadata={"help": "first and last (exclusive) step of the time-travel window"})

    def _check(self) -> None:
        check_number("--scale", self.scale, low=0, high=MAX_SCALE)
        if self.estimator != RunOptions.estimator:
            raise UsageError(f"sdo guide takes no --estimator (got {self.estimator!r}): its gradient always goes "
                             "through one step's predicted clean sample; estimators are for sdo latent and finetune")
        if self.compile:
            raise UsageError("--compile compiles the network calls that record no graph; guidance differentiates "
                             "every step, so sdo guide has none: run it without --compile")
        if self.travel < 1 or len(self.travel_window) != 2 or not 0 <= self.travel_window[0] <= self.travel_window[1] <= self.steps:
            raise UsageError(f"--travel must be >= 1 and --travel-window two steps within 0..{self.steps}")
