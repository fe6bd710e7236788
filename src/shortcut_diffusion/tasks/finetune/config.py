"""``FinetuneConfig``: every option of ``sdo finetune`` (the dataclass generates the CLI).

The options it shares with ``sdo latent`` (model, precision, sampling, conditions, reward,
optimizer, run directory) come from the groups of :mod:`shortcut_diffusion.options.groups`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from shortcut_diffusion.options.choices import FINETUNE_TARGETS as TARGETS
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import (ConditionOptions, MemoryOptions, ModelOptions, OptimizerOptions,
                                               RewardOptions, RunOptions, SamplingOptions, TrackingOptions,
                                               check_number, check_seed, redefault)

DEFAULT_LR = {"lora": 1e-3, "full": 2e-5, "embedding": 5e-3}
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")
EARLY_STOP_METRICS = {"reward": 1, "accuracy": 1, "judge_accuracy": 1, "diversity": 1, "digits_fd": -1, "class_fd": -1}
"""Evaluation metrics early stopping can watch, with +1 where higher is better."""

# What a checkpoint must agree on to be resumed: the options that change the training itself.
RESUME_KEYS = ("model", "target", "lora_rank", "lora_alpha", "lora_modules", "reward", "reward_augment",
               "reward_views", "estimator", "scheduler", "steps", "eta", "guidance", "cond", "prompt", "prompts_file",
               "negative_prompt", "height", "width", "lr", "weight_decay", "betas", "lr_schedule", "lr_warmup",
               "clip_grad", "ema", "kl_weight", "dtype", "seed")


@dataclass
class FinetuneConfig(TrackingOptions, RunOptions, OptimizerOptions, RewardOptions, ConditionOptions, SamplingOptions, MemoryOptions,
                     ModelOptions):
    steps: int = redefault(SamplingOptions, "steps", 25)
    estimator: str = field(default="sdo:keep=random", metadata={"help": "gradient estimator spec (random estimators draw per sample)"})
    batch: int = field(default=8, metadata={"help": "samples per process per micro-batch"})
    out: str = redefault(RunOptions, "out", "runs/finetune")
    lr: Optional[float] = field(default=None, metadata={"help": "AdamW learning rate (default: 1e-3 lora, 2e-5 full, 5e-3 embedding)"})
    clip_grad: Optional[float] = redefault(OptimizerOptions, "clip_grad", 1.0)
    target: str = field(default="lora", metadata={"help": "what is trained", "choices": list(TARGETS)})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_schedule: str = field(default="constant", metadata={"help": "learning-rate schedule", "choices": list(LR_SCHEDULES)})
    lr_warmup: int = field(default=0, metadata={"help": "warm-up optimizer steps of the schedule"})
    ema: Optional[float] = field(default=None, metadata={"help": "EMA decay of the trained weights (e.g. 0.99); evaluation and export use the EMA"})
    kl_weight: float = field(default=0.0, metadata={"help": "weight of the KL-style penalty to the frozen base model (squared network-output difference at a random step)"})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_alpha: Optional[float] = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_modules: list[str] = field(default_factory=list, metadata={"help": "LoRA target modules, name suffixes (default: the "
                                                                              "model's: attention projections, and a UNet's convolutions)"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps (default: 200 unless --minutes is given)"})
    minutes: Optional[float] = field(default=None, metadata={"help": "wall-clock budget of training in minutes (evaluation excluded)"})
    eval_every: int = field(default=25, metadata={"help": "evaluate every k optimizer steps (0: only before and after)"})
    eval_per_class: int = field(default=10, metadata={"help": "evaluation samples per condition, on fixed noise"})
    eval_seed: int = field(default=1234, metadata={"help": "seed of the evaluation noise (kept apart from training)"})
    eval_cond: list[str] = field(default_factory=list, metadata={"help": "evaluate on these conditions instead of the training ones "
                                                                         "(held-out classes or prompts); the training conditions are "
                                                                         "then reported as seen_* metrics"})
    eval_prompts_file: Optional[str] = field(default=None, metadata={"help": "file with one held-out evaluation condition per line "
                                                                              "(replaces --eval-cond)"})
    early_stop: int = field(default=0, metadata={"help": "stop after this many evaluations without improvement (0: never); the best weights are kept"})
    early_stop_metric: str = field(default="reward", metadata={"help": "evaluation metric early stopping watches", "choices": list(EARLY_STOP_METRICS)})
    checkpoint_every: int = field(default=25, metadata={"help": "write a checkpoint every k optimizer steps (0: never)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its latest checkpoint"})
    fsdp: bool = field(default=False, metadata={"help": "shard the network over the processes of accelerate launch (FSDP): "
                                                       "full fine-tuning of a network that does not fit one device"})

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.target] if self.lr is None else self.lr

    @property
    def total_steps(self) -> Optional[int]:
        """The step limit: --max-steps, else 200 when no time budget is given, else none."""
        if self.max_steps is not None:
            return self.max_steps
        return None if self.minutes is not None else 200

    def _check(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        positive = {"grad-accum": self.grad_accum, "eval-per-class": self.eval_per_class,
                    "keep-checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name} must be >= 1, got {value}")
        check_number("--lr", self.learning_rate, low=0, strict=True)
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        check_number("--minutes", self.minutes, low=0, strict=True)
        if self.lr_schedule in ("cosine", "linear") and self.total_steps is None:
            raise UsageError(f"--lr-schedule {self.lr_schedule} needs --max-steps (its length)")
        if self.ema is not None and not 0 < self.ema < 1:
            raise UsageError(f"--ema must be a decay in (0, 1), got {self.ema}")
        check_number("--kl-weight", self.kl_weight, low=0)
        if self.lora_rank < 1:
            raise UsageError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        check_number("--lora-alpha", self.lora_alpha, low=0, strict=True)  # alpha 0 scales the adapter to nothing
        check_seed("--eval-seed", self.eval_seed)
        check_number("--weight-decay", self.weight_decay, low=0)
        if min(self.eval_every, self.checkpoint_every, self.early_stop, self.lr_warmup) < 0:
            raise UsageError("--eval-every, --checkpoint-every, --early-stop and --lr-warmup must be >= 0")
        if self.early_stop and not self.eval_every:
            raise UsageError("--early-stop needs periodic evaluation (--eval-every > 0)")
        if self.eval_prompts_file is not None and not Path(self.eval_prompts_file).is_file():
            raise UsageError(f"--eval-prompts-file {self.eval_prompts_file} does not exist")
        if self.fsdp:
            from shortcut_diffusion.tasks.finetune.sharding import check_fsdp

            check_fsdp(self)
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
