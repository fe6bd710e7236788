"""Deterministic DDIM inversion, on the timesteps and in the latent scale of the sampler used next.

Song et al., "Denoising Diffusion Implicit Models" (arXiv 2010.02502), run backwards as in
Mokady et al., "Null-text Inversion" (arXiv 2211.09794). With the sampler's timesteps
``tau_0 > ... > tau_{N-1}`` and their noise levels ``abar_i`` (``abar_N``: the level after the last
step), forward step i maps ``x(tau_i)`` to ``x(tau_{i+1})``. Inverting step i uses the network
output at ``tau_i`` evaluated on the less noisy latent (the usual approximation
``eps(x(tau_i)) ~ eps(x(tau_{i+1}))``)::

    x0 = (x - sqrt(1 - abar_{i+1}) eps) / sqrt(abar_{i+1})
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

from .errors import UsageError
from .schedulers import fresh_scheduler, is_flow_matching


def noise_levels(scheduler: Any) -> torch.Tensor:
    """``abar`` (float64) at each of the set scheduler's timesteps, then after its last step."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        s = sigmas.to(torch.float64).cpu()
        return 1.0 / (1.0 + s.square())
    abar = scheduler.alphas_cumprod.to(torch.float64).cpu()
    levels = [abar[int(t)] for t in scheduler.timesteps]
    final = getattr(scheduler, "final_alpha_cumprod", None)
    levels.append(torch.as_tensor(1.0 if final is None else float(final), dtype=torch.float64))
    return torch.stack(levels)


def sampler_scale(scheduler: Any, start: int) -> float:
    """What the latent at step ``start`` is multiplied by in ``scheduler``'s own scale (1 for
    variance-preserving samplers, ``1 / sqrt(abar)`` for sigma-scaled ones). At step 0 it is 1:
    :func:`~shortcut_diffusion.sampling.sample` applies ``init_noise_sigma`` there itself."""
    if start == 0 or float(getattr(scheduler, "init_noise_sigma", 1.0)) == 1.0:
        return 1.0
    return float(noise_levels(scheduler)[start].rsqrt())


@torch.no_grad()
def ddim_invert(denoiser: Any, scheduler: Any, image_latent: torch.Tensor, *, steps: int,
                start: int = 0, cond: Any = None, set_timesteps_kwargs: Optional[dict] = None) -> torch.Tensor:
    """The latent at step ``start`` of ``scheduler`` (in its scale) from which deterministic
    sampling regenerates ``image_latent``."""
    if not 0 <= start < steps:
        raise UsageError(f"inversion needs 0 <= start < steps, got start={start}, steps={steps}")
    if is_flow_matching(scheduler):
        raise UsageError("DDIM inversion needs a diffusion (epsilon or v-prediction) model; "
                         "flow-matching models (SD3, Flux) are not supported")
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise UsageError(f"DDIM inversion supports epsilon and v_prediction models, not {kind!r}")
    sched = fresh_scheduler(scheduler, steps, device=image_latent.device, **(set_timesteps_kwargs or {}))
    abar = noise_levels(sched)
    x = image_latent
    for i in range(steps - 1, start - 1, -1):
        a_next, a_here = abar[i + 1], abar[i]
        out = denoiser(x, sched.timesteps[i], cond)
        if kind == "v_prediction":  # eps from v at the current (less noisy) level
            eps = a_next.sqrt().to(x.dtype) * out + (1 - a_next).sqrt().to(x.dtype) * x
        else:
            eps = out
        x0 = (x - (1 - a_next).sqrt().to(x.dtype) * eps) / a_next.sqrt().to(x.dtype)
        x = a_here.sqrt().to(x.dtype) * x0 + (1 - a_here).sqrt().to(x.dtype) * eps
    return x * sampler_scale(sched, start)
