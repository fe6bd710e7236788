"""``BenchConfig``: the options of ``sdo bench`` (torch-free; the benchmark itself is :mod:`.cost`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import (ConditionOptions, ModelOptions, RewardOptions, RunOptions,
                                               SamplingOptions, check_seed, redefault)

DEFAULT_ESTIMATORS = ["full", "checkpointed", "truncated:k=1", "alignprop", "refl", "drtune", "sdo"]


@dataclass
class BenchConfig(RewardOptions, ConditionOptions, ModelOptions):
    model: Optional[str] = redefault(ModelOptions, "model", None, help="model: digits, toy, sd15-random[:RES], a saved "
                                     "testbed or a diffusers pipeline (default: digits; toy with --quick)")
    steps: list[int] = field(default_factory=lambda: [10, 25, 50, 100], metadata={"help": "numbers of sampling steps N"})
    estimators: list[str] = field(default_factory=lambda: list(DEFAULT_ESTIMATORS),
                                  metadata={"help": "estimator specs (plain sampling is always measured)"})
    batch: int = redefault(RunOptions, "batch", 8, help="latents per iteration")
    repeats: int = field(default=5, metadata={"help": "timed iterations per configuration (median reported)"})
    reward: str = redefault(RewardOptions, "reward", "auto", help="reward (auto: digit-match on the testbed, neg-mse otherwise)")
    seed: int = redefault(RunOptions, "seed", 0, help="seed")
    out: str = redefault(RunOptions, "out", "runs/bench", help="output directory")
    overwrite: bool = redefault(RunOptions, "overwrite", False, help="replace an earlier sdo bench run in --out (only the "
                                "files sdo wrote are removed)")
    time_to_reward: bool = field(default=False, metadata={"help": "also measure time-to-reward on the latent and the fine-tuning task (digits testbed)"})
    latent_seconds: float = field(default=60.0, metadata={"help": "time-to-reward: seconds of latent optimization per estimator"})
    finetune_minutes: float = field(default=2.0, metadata={"help": "time-to-reward: minutes of LoRA fine-tuning per estimator"})
    compile: bool = redefault(SamplingOptions, "compile", False, help="run the network calls that record no graph through "
                              "torch.compile (compiled in the warm-up round, outside the timed iterations)")
    frames_grid: list[int] = field(default_factory=list, metadata={
        "help": "video models: bytes saved for backward at each of these frame counts x each --steps, in this "
                "process (video_memory.md; default estimators full, checkpointed, truncated:k=2, sdo)"})
    quick: bool = field(default=False, metadata={"help": "tiny run that checks the harness (steps 2 and 4, 1 repeat, batch 2, "
                                                         "in this process: peak memory is not per configuration)"})

    def _check(self) -> None:
        check_seed("--seed", self.seed)
        if self.eval_reward:
            raise UsageError("sdo bench takes no --eval-reward (it measures the cost of one reward's gradient); "
                             "held-out rewards are for sdo latent, guide and finetune")
