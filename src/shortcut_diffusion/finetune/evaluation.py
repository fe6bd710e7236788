"""Evaluation on fixed held-out noise: the same samples before, during and after fine-tuning."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from ..models import conditioning, denoiser_of, model_device, timestep_kwargs
from ..sampling import sample


def reward_labels(labels: Sequence[Any], device: torch.device) -> Any:
    """What rewards receive: prompts as a list, class indices as a tensor on ``device``."""
    if len(labels) and isinstance(labels[0], str):
        return list(labels)
    return torch.as_tensor(labels, device=device)


def eval_labels(conditions: Sequence[Any], per_class: int) -> list[Any]:
    """Every condition ``per_class`` times, in order (condition-major)."""
    return [c for c in conditions for _ in range(per_class)]


def eval_noise(model: Any, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((count, *model.sample_shape), generator=gen)


@torch.no_grad()
def generate(model: Any, scheduler: Any, noise: torch.Tensor, labels: Sequence[Any], *, steps: int,
             guidance: Optional[float] = None, seed: int = 0, batch: int = 256,
             autocast: Callable[[], Any] = None) -> torch.Tensor:
    """Samples on ``noise`` (no grad), clamped to [-1, 1], on the CPU."""
    import contextlib

    device = model_device(model)
    denoiser = denoiser_of(model, guidance)
    images = []
    for i in range(0, len(noise), batch):
        cond = conditioning(model, labels[i : i + batch])
        with (autocast() if autocast else contextlib.nullcontext()):
            x = sample(denoiser, scheduler, noise[i : i + batch].to(device), steps=steps, cond=cond, generator=seed,
                       set_timesteps_kwargs=timestep_kwargs(model, steps)).sample
        images.append(model.decode(x).float().clamp(-1, 1).cpu())
    return torch.cat(images)


def evaluate(model: Any, reward: Callable, images: torch.Tensor, labels: Sequence[Any]) -> dict[str, float]:
    """Mean reward, and on the digits testbed digits-FD, conditional accuracy and diversity
    (from two samples up)."""
    device = model_device(model)
    with torch.no_grad():
        row = {"reward": float(reward(images.to(device), reward_labels(labels, device)).mean())}
    if hasattr(model, "classifier") and len(images) >= 2:  # a Frechet distance needs two samples
        from ..testbed import metrics

        row.update(metrics.evaluate(model.classifier, images, torch.as_tensor(labels)))
    return row
