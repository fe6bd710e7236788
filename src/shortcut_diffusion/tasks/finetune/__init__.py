"""Reward fine-tuning of LoRA adapters, full weights or conditioning embeddings (``sdo finetune``).

The library: :class:`FineTuning`, :class:`TrainState`, :func:`make_state` and :func:`train_step`
(:mod:`.train`); the run directory around them: :func:`run_finetune` (:mod:`.run`).
"""

from shortcut_diffusion.lazy import exports

__getattr__ = exports(__name__, {
    "FinetuneConfig": ".config", "load_lora": ".lora", "save_lora": ".lora", "describe": ".run",
    "run_finetune": ".run", "setup": ".run", "TARGETS": ".targets", "load_finetuned": ".targets",
    "make_target": ".targets", "FineTuning": ".train", "TrainState": ".train", "make_state": ".train",
    "train_step": ".train",
})

__all__ = ["TARGETS", "FineTuning", "FinetuneConfig", "TrainState", "describe", "load_finetuned", "load_lora",
           "make_state", "make_target", "run_finetune", "save_lora", "setup", "train_step"]
