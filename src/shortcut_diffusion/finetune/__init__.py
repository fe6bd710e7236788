"""Reward fine-tuning of LoRA adapters, full weights or conditioning embeddings (``sdo finetune``).

The library: :class:`FineTuning`, :class:`TrainState`, :func:`make_state` and :func:`train_step`
(:mod:`.train`); the run directory around them: :func:`run_finetune` (:mod:`.run`).
"""

from .config import FinetuneConfig
from .lora import load_lora, save_lora
from .run import describe, run_finetune, setup
from .targets import TARGETS, load_finetuned, make_target
from .train import FineTuning, TrainState, make_state, train_step

__all__ = ["TARGETS", "FineTuning", "FinetuneConfig", "TrainState", "describe", "load_finetuned", "load_lora",
           "make_state", "make_target", "run_finetune", "save_lora", "setup", "train_step"]
