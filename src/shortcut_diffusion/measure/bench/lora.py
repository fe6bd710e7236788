"""A LoRA adapter on a loaded model, for measuring an iteration of LoRA fine-tuning."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator


def lora_adapter(model: Any, rank: int) -> Callable[[], Any]:
    """Add a rank-``rank`` LoRA adapter to ``model``'s network (on its default modules, as
    ``sdo finetune --target lora``); return ``base``: a context manager giving the denoiser
    without the adapter (the network fine-tuning starts from, which Adjoint Matching regresses
    onto)."""
    from shortcut_diffusion.tasks.finetune.targets import LoraTarget

    adapter = LoraTarget(model, rank=rank)

    @contextlib.contextmanager
    def base() -> Iterator[Any]:
        with adapter.base():
            yield model.denoiser()

    return base
