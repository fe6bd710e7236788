"""What training a testbed model takes, shared by the image testbeds (``digits``, ``digits-flow``)
and the ``moving-digits`` video testbed: the learning-rate schedule, the regression pair of each
objective, the scheduler a testbed is saved with, the EMA update, and the training loop itself."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torch import nn
from tqdm.auto import tqdm

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


def fit(config: TrainTestbedConfig, modules: Sequence[nn.Module], predict: Callable[..., torch.Tensor],
        draw: Callable[[torch.Generator], tuple[torch.Tensor, Any]], gen: torch.Generator, *, objective: str = "diffusion",
        desc: str = "", progress: bool = True) -> tuple[list[nn.Module], list[float]]:
    """The testbeds' training loop: ``config.steps`` AdamW steps (warm-up then cosine decay,
    gradients clipped at 1) of the regression ``predict(x_t, t, cond) -> target`` on batches
    ``(x0, cond) = draw(gen)``; returns an EMA copy of each of ``modules`` (eval mode) and the losses."""
    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    params = [p for module in modules for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config))
    emas = [copy.deepcopy(module).requires_grad_(False) for module in modules]
    ema_params = [p for module in emas for p in module.parameters()]
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, mininterval=30)
    for step in bar:
        x0, cond = draw(gen)
        xt, t, target = training_pair(objective, x0, gen, noise_schedule)
        loss = F.mse_loss(predict(xt, t, cond), target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema_update(ema_params, params, min(config.ema, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    return [module.eval() for module in emas], losses
