"""What training a testbed model takes, shared by the image testbeds (``digits``, ``digits-flow``)
and the ``moving-digits`` video testbed: the learning-rate schedule, the regression pair of each
objective, the scheduler a testbed is saved with, and the EMA update."""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torch import nn

from shortcut_diffusion.models.testbed.config import TrainTestbedConfig


def lr_lambda(config: TrainTestbedConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def training_pair(objective: str, x0: torch.Tensor, gen: torch.Generator,
                   noise_schedule: DDPMScheduler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, network timestep, regression target)`` for a batch of clean digits ``x0``."""
    noise = torch.randn(x0.shape, generator=gen)
    if objective == "flow":  # rectified flow, in FlowMatchEulerDiscreteScheduler's convention
        t = torch.rand(len(x0), generator=gen)
        s = t.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * noise, t * noise_schedule.config.num_train_timesteps, noise - x0
    t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(x0),), generator=gen)
    return noise_schedule.add_noise(x0, noise, t), t, noise


def sampling_scheduler(objective: str) -> Union[DDIMScheduler, FlowMatchEulerDiscreteScheduler]:
    """The scheduler a testbed of ``objective`` is saved with (its ``auto`` sampler)."""
    if objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)


@torch.no_grad()
def ema_update(ema: list[nn.Parameter], params: list[nn.Parameter], decay: float) -> None:
    """Move each EMA tensor toward its parameter: ``ema = decay * ema + (1 - decay) * p``."""
    for ema_p, p in zip(ema, params):
        ema_p.lerp_(p, 1 - decay)
