"""``FinetuneConfig``: every option of ``sdo finetune`` (the dataclass generates the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..errors import UsageError
from ..schedulers import SCHEDULERS
from .lora import DEFAULT_TARGETS
from .targets import TARGETS

DEFAULT_LR = {"lora": 1e-3, "full": 2e-5, "embedding": 5e-3}
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")
EARLY_STOP_METRICS = {"reward": 1, "accuracy": 1, "diversity": 1, "digits_fd": -1}
"""Evaluation metrics early stopping can watch, with +1 where higher is better."""
PRECISIONS = ("fp32", "bf16")

# What a checkpoint must agree on to be resumed: the options that change the training itself.
RESUME_KEYS = ("model", "target", "lora_rank", "lora_alpha", "lora_modules", "reward", "reward_augment",
               "reward_views", "estimator",
               "scheduler", "steps", "guidance", "cond", "prompt", "prompts_file", "negative_prompt", "height", "width", "lr", "weight_decay", "betas",
               "lr_schedule", "lr_warmup", "clip_grad", "ema", "kl_weight", "precision", "seed")


@dataclass
class FinetuneConfig:
    model: str = field(default="digits", metadata={"help": "built-in model name or a saved model directory"})
    target: str = field(default="lora", metadata={"help": "what is trained", "choices": list(TARGETS)})
    reward: str = field(default="digit-match", metadata={"help": "reward name[:arg]"})
    reward_augment: list[str] = field(default_factory=list, metadata={"help": "average the reward over random views: crop, cutout, translation, color"})
    reward_views: int = field(default=4, metadata={"help": "views per image with --reward-augment"})
    estimator: str = field(default="sdo:keep=random", metadata={"help": "gradient estimator spec (random estimators draw per sample)"})
    scheduler: str = field(default="auto", metadata={"help": "scheduler (auto: the model's own)", "choices": ["auto", *SCHEDULERS]})
    steps: int = field(default=25, metadata={"help": "sampling steps per generated sample"})
    guidance: Optional[float] = field(default=None, metadata={"help": "classifier-free guidance scale (default: the model's)"})
    cond: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "conditions to train on: class indices, or all"})
    prompt: list[str] = field(default_factory=list, metadata={"help": "prompts to train on (text-to-image pipelines)"})
    prompts_file: Optional[str] = field(default=None, metadata={"help": "file with one condition (class or prompt) per line (replaces --cond / --prompt)"})
    negative_prompt: Optional[str] = field(default=None, metadata={"help": "negative prompt (pipelines)"})
    height: Optional[int] = field(default=None, metadata={"help": "image height for pipelines (default: the model's)"})
    width: Optional[int] = field(default=None, metadata={"help": "image width for pipelines (default: the model's)"})
    dtype: str = field(default="fp32", metadata={"help": "frozen weights' dtype for pipelines (trained tensors stay fp32)", "choices": ["fp32", "fp16", "bf16"]})
    batch: int = field(default=8, metadata={"help": "samples per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: Optional[float] = field(default=None, metadata={"help": "AdamW learning rate (default: 1e-3 lora, 2e-5 full, 5e-3 embedding)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})
    lr_schedule: str = field(default="constant", metadata={"help": "learning-rate schedule", "choices": list(LR_SCHEDULES)})
    lr_warmup: int = field(default=0, metadata={"help": "warm-up optimizer steps of the schedule"})
    clip_grad: Optional[float] = field(default=1.0, metadata={"help": "clip the gradient norm to this value (none: 0)"})
    ema: Optional[float] = field(default=None, metadata={"help": "EMA decay of the trained weights (e.g. 0.99); evaluation and export use the EMA"})
    kl_weight: float = field(default=0.0, metadata={"help": "weight of the KL-style penalty to the frozen base model (squared network-output difference at a random step)"})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_alpha: Optional[float] = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={"help": "LoRA target modules (name suffixes)"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps (default: 200 unless --minutes is given)"})
    minutes: Optional[float] = field(default=None, metadata={"help": "wall-clock budget of training in minutes (evaluation excluded)"})
    eval_every: int = field(default=25, metadata={"help": "evaluate every k optimizer steps (0: only before and after)"})
    eval_per_class: int = field(default=10, metadata={"help": "evaluation samples per condition, on fixed noise"})
    eval_seed: int = field(default=1234, metadata={"help": "seed of the evaluation noise (kept apart from training)"})
    early_stop: int = field(default=0, metadata={"help": "stop after this many evaluations without improvement (0: never); the best weights are kept"})
    early_stop_metric: str = field(default="reward", metadata={"help": "evaluation metric early stopping watches", "choices": list(EARLY_STOP_METRICS)})
    checkpoint_every: int = field(default=25, metadata={"help": "write a checkpoint every k optimizer steps (0: never)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its latest checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier sdo finetune run in --out (only the files sdo wrote are removed)"})
    precision: str = field(default="fp32", metadata={"help": "network precision (trained weights stay fp32)", "choices": list(PRECISIONS)})
    seed: int = field(default=0, metadata={"help": "seed of the training noise, conditions and estimator draws"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    out: str = field(default="runs/finetune", metadata={"help": "run directory"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.target] if self.lr is None else self.lr

    @property
    def total_steps(self) -> Optional[int]:
        """The step limit: --max-steps, else 200 when no time budget is given, else none."""
        if self.max_steps is not None:
            return self.max_steps
        return None if self.minutes is not None else 200

    def check(self) -> None:
        """Every range check, before anything is loaded."""
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        positive = {"steps": self.steps, "batch": self.batch, "grad-accum": self.grad_accum,
                    "eval-per-class": self.eval_per_class, "keep-checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name} must be >= 1, got {value}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--lr must be > 0, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise UsageError(f"--minutes must be > 0, got {self.minutes}")
        if self.lr_schedule in ("cosine", "linear") and self.total_steps is None:
            raise UsageError(f"--lr-schedule {self.lr_schedule} needs --max-steps (its length)")
        if self.ema is not None and not 0 < self.ema < 1:
            raise UsageError(f"--ema must be a decay in (0, 1), got {self.ema}")
        if self.kl_weight < 0 or self.weight_decay < 0:
            raise UsageError("--kl-weight and --weight-decay must be >= 0")
        if len(self.betas) != 2:
            raise UsageError(f"--betas needs two values, got {self.betas}")
        if min(self.eval_every, self.checkpoint_every, self.early_stop, self.lr_warmup) < 0:
            raise UsageError("--eval-every, --checkpoint-every, --early-stop and --lr-warmup must be >= 0")
        if self.early_stop and not self.eval_every:
            raise UsageError("--early-stop needs periodic evaluation (--eval-every > 0)")
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)} for fine-tuning "
                             "(fp16 training would need loss scaling)")
