"""Deterministic DDIM inversion, on the timesteps and in the latent scale of the sampler used next.

Song et al., "Denoising Diffusion Implicit Models" (arXiv 2010.02502), run backwards as in
Mokady et al., "Null-text Inversion" (arXiv 2211.09794). Forward step i maps the latent at the
noise level ``abar_i`` of the sampler's timestep ``tau_i`` to the level ``abar'_i`` its own step
goes to (DDIM: the level of ``tau_i - T // N`` whatever the spacing; the others: the next listed
timestep; :func:`~shortcut_diffusion.sampling.schedulers.step_levels`). Inverting step i uses the network
output at ``tau_i`` evaluated on the less noisy latent (the usual approximation)::

    x0 = (x - sqrt(1 - abar'_i) eps) / sqrt(abar'_i)
    x(tau_i) = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps

Inverting steps ``N-1 .. start`` gives the variance-preserving latent at step ``start`` (the
warm-up point). The noise levels come from the chosen scheduler itself (``sigmas`` where it has
them, ``abar = 1 / (1 + sigma^2)``; else ``alphas_cumprod`` at its timesteps), so the latent sits at
that scheduler's own timestep ``tau_start``. Samplers that work on ``x / sqrt(abar)`` (Euler and the
other sigma-scaled ones, whose ``init_noise_sigma`` is not 1) get it in their scale:
``x(tau_start) / sqrt(abar_start)``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.schedulers import (eps_from, fresh_scheduler, noise_levels, prediction_type,
                                                    sampler_scale, step_levels, x0_from_eps)

__all__ = ["ddim_invert", "noise_levels", "sampler_scale"]


@torch.no_grad()
def ddim_invert(denoiser: Any, scheduler: Any, image_latent: torch.Tensor, *, steps: int,
                start: int = 0, cond: Any = None, set_timesteps_kwargs: Optional[dict] = None) -> torch.Tensor:
    """The latent at step ``start`` of ``scheduler`` (in its scale) from which deterministic
    sampling regenerates ``image_latent``."""
    if not 0 <= start < steps:
        raise UsageError(f"inversion needs 0 <= start < steps, got start={start}, steps={steps}")
    if prediction_type(scheduler) == "flow":
        raise UsageError("DDIM inversion needs a diffusion (epsilon or v-prediction) model; "
                         "flow-matching models (SD3, Flux) are not supported")
    kind = prediction_type(scheduler)
    if kind not in ("epsilon", "v_prediction"):
        raise UsageError(f"DDIM inversion supports epsilon and v_prediction models, not {kind!r}")
    sched = fresh_scheduler(scheduler, steps, device=image_latent.device, **(set_timesteps_kwargs or {}))
    levels = step_levels(sched)
    x = image_latent
    for i in range(steps - 1, start - 1, -1):
        a_here, a_next = levels[i]
        eps = eps_from(denoiser(x, sched.timesteps[i], cond), x, a_next, kind)  # at the current (less noisy) level
        x = a_here ** 0.5 * x0_from_eps(x, eps, a_next) + (1 - a_here) ** 0.5 * eps
    return x * sampler_scale(sched, start)
