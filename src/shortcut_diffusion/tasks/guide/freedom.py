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

Guidance runs through :func:`~shortcut_diffusion.tasks.generate.generate` like every command: a
per-step hook of the one sampling loop (:class:`~shortcut_diffusion.sampling.loop.GuidedStep`) takes
each step, so the scheduler, its step arguments (``eta``), the noise of ``seed`` per step and the
precision are the loop's own; a repeated step restarts from the scheduler as it was before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.tasks.generate import generate, reward_labels
from shortcut_diffusion.io.interrupts import as_interrupted, raise_unhandled
from shortcut_diffusion.meters import budget_clock
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.precision import Precision
from shortcut_diffusion.sampling.loop import GuidedStep, derived_generator
from shortcut_diffusion.sampling.schedulers import (fresh_scheduler, is_flow_matching, noise_std, renoise,
                                                    sigma_scaled, step_levels)


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


@dataclass
class FreeDoM:
    """The step hook: each step (repeated inside the time-travel window) moved along the reward's
    gradient through the predicted clean sample."""

    model: DiffusionModel
    reward: Callable
    labels: Any
    scale: float
    travel: int
    window: tuple[int, int]
    levels: list[tuple[float, float]]
    """``(abar before, abar after)`` of each step, where the scheduler's own step goes
    (:func:`~shortcut_diffusion.sampling.schedulers.step_levels`: DDIM's ``t - T // N``)."""
    scaled: bool
    seed: int
    calls: int = 0
    last: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    """The result of the last completed step and the clean sample predicted there (what an
    interrupted pass keeps)."""

    def __call__(self, step: GuidedStep) -> torch.Tensor:
        raise_unhandled()  # a signal whose interrupt a finalizer swallowed ends the pass here
        i, x = step.i, step.x
        repeats = self.travel if self.window[0] <= i < self.window[1] else 1
        abar_t, abar_prev = self.levels[i]
        rho = self.scale * noise_std(abar_prev, self.scaled)
        for r in range(repeats):
            x_prev, x0 = self._guided(step, x, r, rho)
            if r + 1 < repeats:  # time travel: noise x_prev back to step i and take the step again
                z = torch.randn(x.shape, generator=derived_generator("sdo-travel", self.seed, i, r)).to(x)
                x = renoise(x_prev, abar_t, abar_prev, z, self.scaled)
        self.last = (x_prev, x0)
        return x_prev

    def _guided(self, step: GuidedStep, x: torch.Tensor, repeat: int, rho: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(the guided x_prev, the clean sample predicted from x)``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = step.step(x, repeat)
            score = self.reward(self.model.images(out.x0), self.labels).sum()
            (g,) = torch.autograd.grad(score, x)
        self.calls += 1
        rms = g.flatten(1).square().mean(1).sqrt().clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
        return out.prev_sample.detach() + rho * g / rms, out.x0.detach()


def freedom_sample(model: DiffusionModel, noise: torch.Tensor, labels: Sequence[Any], reward: Callable, *,
                   steps: int, scale: float = 0.2, travel: int = 1, travel_window: tuple[int, int] = (0, 0),
                   scheduler: Any = None, guidance: Optional[float] = None, seed: int = 0,
                   step_kwargs: Optional[dict[str, Any]] = None, precision: Optional[Precision] = None,
                   compile: bool = False, progress: bool = False) -> GuidedResult:
    """One guided sampling pass from ``noise`` (see the module docstring).

    Args:
        scale: the guidance strength ``rho`` relative to the noise level (0: plain sampling).
        travel, travel_window: repeat each step in ``[first, last)`` of the window ``travel``
            times (1: no time travel).
        step_kwargs, precision, compile: as for :func:`~shortcut_diffusion.tasks.generate.generate`.
    """
    if scale < 0 or travel < 1 or not 0 <= travel_window[0] <= travel_window[1] <= steps:
        raise UsageError(f"guidance needs scale >= 0, travel >= 1 and a window inside 0..{steps}")
    template = scheduler if scheduler is not None else model.scheduler
    if is_flow_matching(template):
        raise UsageError("training-free guidance here needs a diffusion (epsilon or v) model, not flow matching")
    first = fresh_scheduler(template, steps, device=noise.device, **model.timestep_kwargs(steps))
    hook = FreeDoM(model, reward, reward_labels(labels, model.device), scale, travel, tuple(travel_window),
                   step_levels(first), sigma_scaled(first), seed)
    began, interrupt, stopped = budget_clock(), None, None
    try:
        out = generate(model, noise, list(labels), steps=steps, guidance=guidance, scheduler=template, seed=seed,
                       step_kwargs=step_kwargs, precision=precision, compile=compile, progress=progress,
                       step_hook=hook)
        images, latents = out.images, out.latents.detach()
    except KeyboardInterrupt as error:
        if hook.last is None:  # not one step done: nothing worth keeping
            raise
        interrupted = as_interrupted(error)
        interrupt = interrupted.signum
        stopped = f"interrupted ({interrupted.name}) after {hook.calls} guided steps; images predicted at the last one"
        latents, x0 = hook.last
        with torch.no_grad():
            images = model.images(x0)
    seconds = budget_clock() - began
    with torch.no_grad():
        rewards = reward(images, hook.labels).detach()
    return GuidedResult(images.cpu(), latents.cpu(), rewards.cpu(), seconds, hook.calls, interrupt, stopped)
