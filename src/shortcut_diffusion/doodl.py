"""DOODL latent optimization: Adam on the initial noise with exact EDICT gradients.

Wallace, Gokul, Ermon, Naik, "End-to-End Diffusion Latent Optimization Improves Classifier
Guidance", ICCV 2023 (arXiv 2303.13703). Every iteration samples with EDICT from the noise,
scores the decoded sample, takes the exact gradient through the whole chain at constant memory
(:func:`~shortcut_diffusion.edict.doodl_gradient`), steps Adam and puts the noise back on the
Gaussian shell (:func:`~shortcut_diffusion.edict.renormalize`). The samples are EDICT's, so they
are compared with plain EDICT samples of the starting noise. For the multi-crop reward of the paper,
build the reward with ``augment=["crop"]`` (``--reward-augment crop``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from .edict import doodl_gradient, edict_sample, renormalize
from .generation import detached, reward_labels
from .models.base import DiffusionModel
from .optimize import LatentResult
from .rewards.contract import checked


def optimize_doodl(model: DiffusionModel, reward: Callable, labels: Any, *, steps: int = 50, iters: int = 30,
                   lr: float = 0.15, betas=(0.9, 0.999), seed: int = 0, guidance: Optional[float] = None,
                   scheduler: Any = None, progress: bool = True,
                   callback: Optional[Callable[[dict, torch.Tensor, torch.Tensor], None]] = None) -> LatentResult:
    """Optimize the initial noise of ``len(labels)`` samples with DOODL (see the module docstring)."""
    labels = list(labels)
    reward, scheduler = checked(reward), scheduler if scheduler is not None else model.scheduler
    denoiser, cond = model.denoiser(guidance), detached(model.conditioning(labels))
    targets = reward_labels(labels, model.device)

    def images_of(x: torch.Tensor) -> torch.Tensor:
        return model.decode(x).float().clamp(-1, 1)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return -reward(images_of(x), targets).sum()

    @torch.no_grad()
    def plain(z: torch.Tensor) -> torch.Tensor:
        return images_of(edict_sample(denoiser, scheduler, z, steps=steps, cond=cond)[0])

    z = torch.randn((len(labels), *model.sample_shape), generator=torch.Generator().manual_seed(seed)).to(model.device)
    start_images = plain(z)
    start_rewards = reward(start_images, targets).detach()
    z = z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=tuple(betas))
    history, elapsed = [], 0.0
    for it in tqdm(range(iters), desc="latent[doodl]", disable=not progress):
        began = time.perf_counter()
        loss, grad, calls, x_final = doodl_gradient(denoiser, scheduler, z.detach(), objective, steps=steps, cond=cond)
        z.grad = grad
        optimizer.step()
        with torch.no_grad():
            z.copy_(renormalize(z))
        seconds = time.perf_counter() - began
        elapsed += seconds
        history.append({"iter": it, "reward": float(-loss) / len(labels), "loss": float(loss), "seconds": seconds,
                        "grad_norm": float(grad.norm()), "nfe_forward": calls["forward"],
                        "nfe_backward": calls["backward"], "wall_clock": elapsed})
        if callback is not None:
            callback(history[-1], z.detach(), images_of(x_final).detach())
    final = z.detach()
    images = plain(final)
    return LatentResult(final.cpu(), images.cpu(), start_images.cpu(), reward(images, targets).detach().cpu(),
                        start_rewards.cpu(), history, None)
