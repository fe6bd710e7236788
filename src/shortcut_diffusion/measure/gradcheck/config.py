"""``GradcheckConfig``: the options of ``sdo gradcheck`` (torch-free; the check itself is :mod:`.gradcheck`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import (ConditionOptions, ModelOptions, RewardOptions, RunOptions,
                                               SamplingOptions, check_number, check_seed, redefault)

DEFAULT_ESTIMATORS = [
    "full",
    "checkpointed",
    "truncated:k=1",
    "truncated:k=all",
    "alignprop",
    "refl",
    "sdo",
    "sdo:keep=last",
    "drtune",
]
TARGETS = ("latent", "cond", "weights")


@dataclass
class GradcheckConfig(RewardOptions, ConditionOptions, SamplingOptions, ModelOptions):
    scheduler: str = redefault(SamplingOptions, "scheduler", "auto")
    batch: int = redefault(RunOptions, "batch", 2)
    target: str = field(default="latent", metadata={"help": "what the gradient is taken for", "choices": list(TARGETS)})
    reward: str = field(default="auto", metadata={"help": "differentiable reward (name[:arg]); auto: digit-match on the testbed, neg-mse otherwise"})
    estimators: list[str] = field(
        default_factory=lambda: list(DEFAULT_ESTIMATORS),
        metadata={"help": "estimator specs, name[:key=value,...]; full is always included first"},
    )
    seed: int = redefault(RunOptions, "seed", 0, help="seed of the latent, the noise and the estimators")
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})
    anatomy: bool = field(default=False, metadata={"help": "also split each estimator's gradient into the linear path "
                                                            "(every network output detached) and the network part, "
                                                            "and full's network part per step (target latent)"})

    def _check(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        check_number("--batch", self.batch, low=1)  # --steps: SamplingOptions
        check_seed("--seed", self.seed)
        if self.anatomy and self.target != "latent":
            raise UsageError(f"--anatomy splits the gradient w.r.t. the latent (the linear path carries no gradient "
                             f"to the {self.target}): use it with --target latent")
        if self.eval_reward:
            raise UsageError("sdo gradcheck takes no --eval-reward (it compares gradients of one reward); "
                             "held-out rewards are for sdo latent, guide and finetune")
