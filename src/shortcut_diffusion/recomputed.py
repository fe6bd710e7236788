"""Latent optimization with the recomputing methods (:mod:`.methods`): Adam on the initial noise.

Every iteration samples with the method's own sampler from the noise, scores the decoded sample,
takes the gradient with the states recomputed backward (memory of one step), steps Adam and
projects: DOODL (Wallace et al., ICCV 2023, arXiv 2303.13703) puts the noise back on the Gaussian
shell (:func:`~shortcut_diffusion.edict.renormalize`); the adjoint (AdjointDPM, arXiv 2307.10711)
keeps it there with the chi prior of every other estimator. The samples are the method's own
(EDICT's for DOODL, DDIM's for the adjoint), so start and end are compared on that sampler. For
the multi-crop reward of DOODL, build the reward with ``augment=["crop"]`` (``--reward-augment crop``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Union

import torch
from tqdm.auto import tqdm

from .diagnostics import SavedTensorMeter, model_weights
from .generation import detached, reward_labels
from .interrupts import as_interrupted, deferred
from .methods import RecomputedMethod, get_gradient_method, unmetered
from .models.base import DiffusionModel
from .optimize import LatentResult, chi_prior, default_prior_weight
from .rewards.contract import checked


def optimize_recomputed(model: DiffusionModel, reward: Callable, labels: Any, *,
                        method: Union[str, RecomputedMethod] = "doodl", steps: int = 50, iters: int = 30,
                        lr: float = 0.15, betas=(0.9, 0.999), prior_weight: Optional[float] = None, seed: int = 0,
                        guidance: Optional[float] = None, scheduler: Any = None, progress: bool = True,
                        callback: Optional[Callable[[dict, torch.Tensor, torch.Tensor], None]] = None,
                        max_seconds: Optional[float] = None) -> LatentResult:
    """Optimize the initial noise of ``len(labels)`` samples with ``method`` (``doodl`` or
    ``adjoint``); ``max_seconds`` stops after that much optimization wall-clock."""
    labels, method = list(labels), get_gradient_method(method)
    reward, scheduler = checked(reward), scheduler if scheduler is not None else model.scheduler
    denoiser, cond = model.denoiser(guidance), detached(model.conditioning(labels))
    targets = reward_labels(labels, model.device)
    weight = default_prior_weight(prior_weight, True) if method.uses_prior else (prior_weight or 0.0)
    weights = model_weights(model)

    def images_of(x: torch.Tensor) -> torch.Tensor:
        return model.decode(x).float().clamp(-1, 1)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return -reward(images_of(x), targets).sum()

    @torch.no_grad()
    def plain(z: torch.Tensor) -> torch.Tensor:
        return images_of(method.sample(denoiser, scheduler, z, steps=steps, cond=cond))

    z = torch.randn((len(labels), *model.sample_shape), generator=torch.Generator().manual_seed(seed)).to(model.device)
    start_images = plain(z)
    start_rewards = reward(start_images, targets).detach()
    z = z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=tuple(betas))
    history, elapsed, stopped, interrupt = [], 0.0, None, None
    try:
        for it in tqdm(range(iters), desc=f"latent[{method.name}]", disable=not progress):
            began = time.perf_counter()
            with SavedTensorMeter(exclude=weights) as meter:
                r = method.gradient(denoiser, scheduler, z.detach(), unmetered(objective), steps=steps, cond=cond)
            grad, prior = r.grad, 0.0
            if weight:
                with torch.enable_grad():
                    leaf = z.detach().requires_grad_(True)
                    prior_loss = weight * chi_prior(leaf).sum()
                    grad = grad + torch.autograd.grad(prior_loss, leaf)[0]
                prior = float(prior_loss.detach())
            with deferred():  # an interrupt never leaves a half-updated latent
                z.grad = grad
                optimizer.step()
                with torch.no_grad():
                    z.copy_(method.project(z))
            seconds = time.perf_counter() - began
            elapsed += seconds
            history.append({"iter": it, "reward": float(-r.value) / len(labels), "loss": float(r.value) + prior,
                            "seconds": seconds, "saved_bytes": meter.peak_bytes, "grad_norm": float(grad.norm()),
                            "nfe_forward": r.info["forward"], "nfe_backward": r.info["backward"], "wall_clock": elapsed})
            if callback is not None:
                callback(history[-1], z.detach(), images_of(r.final).detach())
            if max_seconds is not None and elapsed >= max_seconds:
                break
    except KeyboardInterrupt as error:
        interrupted = as_interrupted(error)
        interrupt, stopped = interrupted.signum, f"interrupted ({interrupted.name}); kept the last updated latents"
    final = z.detach()
    images = plain(final)
    return LatentResult(final.cpu(), images.cpu(), start_images.cpu(), reward(images, targets).detach().cpu(),
                        start_rewards.cpu(), history, stopped, interrupt)


def optimize_doodl(model: DiffusionModel, reward: Callable, labels: Any, **kwargs: Any) -> LatentResult:
    """:func:`optimize_recomputed` with DOODL."""
    return optimize_recomputed(model, reward, labels, method="doodl", **kwargs)
