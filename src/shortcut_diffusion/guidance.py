"""Training-free guidance: steer one sampling pass with the reward's gradient (FreeDoM, DPS-style).

Yu, Wang, Zhao, Zhang, Zhang, "FreeDoM: Training-Free Energy-Guided Conditional Diffusion Model",
ICCV 2023 (arXiv 2303.09833); the gradient is taken through the predicted clean sample as in
Chung et al.'s diffusion posterior sampling (DPS, arXiv 2209.14687). This is the SDO paper's
baseline for controlled generation without an optimization loop.

At every step t the network predicts the noise and, through the scheduler's own step, the clean
sample x0(x_t); the reward of the decoded x0 is differentiated with respect to x_t, and the
ordinary update is moved along that gradient::

    x_prev = step(eps(x_t), x_t) + rho_t * g / rms(g),   g = d reward(decode(x0(x_t))) / d x_t

per sample, with ``rho_t = scale * sqrt(1 - abar_prev)`` (strong while the sample is noisy, none
at the end). Time travel (FreeDoM's resampling) repeats a step ``travel`` times inside a window of
steps: the guided ``x_prev`` is noised back to ``t`` with fresh noise, ``x_t = sqrt(a) x_prev +
sqrt(1 - a) z`` with ``a = abar_t / abar_prev``, and the step is taken again.

Every step runs a fresh copy of the scheduler started at that step (multistep solvers run first
order, as after a warm-up split), so any scheduler with ``pred_original_sample`` or a known
parameterization works; the noise comes from ``seed`` per step and repetition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .errors import UsageError
from .interrupts import as_interrupted
from .generation import reward_labels
from .inversion import noise_levels
from .models.base import DiffusionModel
from .sampling import derived_generator
from .schedulers import accepted_step_kwargs, fresh_scheduler, is_flow_matching, predicted_x0


@dataclass
class GuidedResult:
    images: torch.Tensor
    """The guided samples, float32 NCHW in [-1, 1], on the CPU."""
    latents: torch.Tensor
    rewards: torch.Tensor
    """The reward of ``images``."""
    seconds: float
    """Wall-clock of the guided pass (scoring of the final images excluded)."""
    network_calls: int
    interrupt: Optional[int] = None
    """The signal that interrupted the pass (SIGINT for Ctrl-C, SIGTERM), or None: ``images`` are
    then the clean samples predicted at the last completed step, ``latents`` that step's result."""
    stopped: Optional[str] = None


def _guided_step(model: DiffusionModel, denoiser: Callable, sched: Any, x: torch.Tensor, t: torch.Tensor, cond: Any,
                 reward: Callable, labels: Any, rho: float, step_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(the guided x_prev, the clean sample predicted from x)``."""
    x = x.detach().requires_grad_(True)
    x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
    output = denoiser(x_in, t, cond)
    out = sched.step(output, t, x, return_dict=True, **step_kwargs)
    x0 = predicted_x0(sched, out, x, output, t)
    score = reward(model.decode(x0).float().clamp(-1, 1), labels).sum()
    (g,) = torch.autograd.grad(score, x)
    rms = g.flatten(1).square().mean(1).sqrt().clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
    return out.prev_sample.detach() + rho * g / rms, x0.detach()


def _noise_std(abar: torch.Tensor, sigma_scaled: bool) -> float:
    """The noise level of a latent at ``abar`` in the sampler's own scale."""
    abar = float(abar)
    return ((1 - abar) / abar) ** 0.5 if sigma_scaled else max(1 - abar, 0.0) ** 0.5


def _renoise(x_prev: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor, z: torch.Tensor,
             sigma_scaled: bool) -> torch.Tensor:
    """The forward process from the level ``abar_prev`` back to ``abar_t`` (``abar_t <= abar_prev``)."""
    if sigma_scaled:  # x = x0 + sigma * noise: add the difference of variances
        extra = max(_noise_std(abar_t, True) ** 2 - _noise_std(abar_prev, True) ** 2, 0.0)
        return x_prev + extra ** 0.5 * z
    a = float(abar_t / abar_prev)
    return a ** 0.5 * x_prev + (1 - a) ** 0.5 * z


def freedom_sample(model: DiffusionModel, noise: torch.Tensor, labels: Sequence[Any], reward: Callable, *,
                   steps: int, scale: float = 0.2, travel: int = 1, travel_window: tuple[int, int] = (0, 0),
                   scheduler: Any = None, guidance: Optional[float] = None, seed: int = 0,
                   progress: bool = False) -> GuidedResult:
    """One guided sampling pass from ``noise`` (see the module docstring).

    Args:
        scale: the guidance strength ``rho`` relative to the noise level (0: plain sampling).
        travel, travel_window: repeat each step in ``[first, last)`` of the window ``travel``
            times (1: no time travel).
    """
    if scale < 0 or travel < 1 or not 0 <= travel_window[0] <= travel_window[1] <= steps:
        raise UsageError(f"guidance needs scale >= 0, travel >= 1 and a window inside 0..{steps}")
    template = scheduler if scheduler is not None else model.scheduler
    if is_flow_matching(template):
        raise UsageError("training-free guidance here needs a diffusion (epsilon or v) model, not flow matching")
    timestep_kwargs = model.timestep_kwargs(steps)
    first = fresh_scheduler(template, steps, device=noise.device, **timestep_kwargs)
    levels = noise_levels(first)
    sigma_scaled = float(getattr(first, "init_noise_sigma", 1.0)) != 1.0  # Euler-type: x / sqrt(abar)
    denoiser, cond = model.denoiser(guidance), model.conditioning(list(labels))
    targets = reward_labels(labels, model.device)
    x = noise * float(getattr(first, "init_noise_sigma", 1.0))
    calls, began, x0, interrupt, stopped = 0, time.perf_counter(), None, None, None
    try:
        for i in tqdm(range(steps), desc="guided sampling", disable=not progress):
            repeats = travel if travel_window[0] <= i < travel_window[1] else 1
            for r in range(repeats):
                sched = fresh_scheduler(template, steps, device=x.device, **timestep_kwargs)
                if i and hasattr(sched, "set_begin_index"):  # schedulers that count their steps (Euler, DPM-Solver)
                    sched.set_begin_index(i)
                step_kwargs = {"generator": derived_generator("sdo-guide", seed, i, r)} if "generator" in accepted_step_kwargs(sched) else {}
                rho = scale * _noise_std(levels[i + 1], sigma_scaled)
                x_prev, x0_i = _guided_step(model, denoiser, sched, x, sched.timesteps[i], cond, reward, targets, rho,
                                            step_kwargs)
                calls += 1
                if r + 1 < repeats:  # time travel: noise x_prev back to step i and take the step again
                    z = torch.randn(x.shape, generator=derived_generator("sdo-travel", seed, i, r)).to(x)
                    x = _renoise(x_prev, levels[i], levels[i + 1], z, sigma_scaled)
            x, x0 = x_prev, x0_i
    except KeyboardInterrupt as error:
        if x0 is None:  # not one step done: nothing worth keeping
            raise
        interrupted = as_interrupted(error)
        interrupt = interrupted.signum
        stopped = f"interrupted ({interrupted.name}) after {calls} guided steps; images predicted at the last one"
    seconds = time.perf_counter() - began
    with torch.no_grad():
        images = model.decode(x if interrupt is None else x0).float().clamp(-1, 1)
        rewards = reward(images, targets).detach()
    return GuidedResult(images.cpu(), x.detach().cpu(), rewards.cpu(), seconds, calls, interrupt, stopped)
