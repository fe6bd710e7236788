"""Reward fine-tuning of LoRA adapters, full weights or conditioning embeddings (``sdo finetune``)."""

from .config import FinetuneConfig
from .lora import load_lora, save_lora
from .loop import describe, run_finetune
from .targets import TARGETS, load_finetuned, make_target

__all__ = ["TARGETS", "FinetuneConfig", "describe", "load_finetuned", "load_lora", "make_target",
           "run_finetune", "save_lora"]
