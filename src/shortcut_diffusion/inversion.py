"""Deterministic DDIM inversion: the latent from which DDIM (eta = 0) regenerates a given image.

Song et al., "Denoising Diffusion Implicit Models" (arXiv 2010.02502), run backwards as in
Mokady et al., "Null-text Inversion" (arXiv 2211.09794). With the forward DDIM timesteps
``tau_0 > ... > tau_{N-1}`` (and ``abar(tau_N)`` = the scheduler's final alpha), forward step i maps
``x(tau_i)`` to ``x(tau_{i+1})``. Inverting step i uses the network output at ``tau_i`` evaluated on
the less noisy latent (the usual approximation ``eps(x(tau_i)) ~ eps(x(tau_{i+1}))``)::

    x0 = (x - sqrt(1 - abar_{i+1}) eps) / sqrt(abar_{i+1})
    x(tau_i) = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps

Inverting steps ``N-1 .. start`` gives the latent at step ``start`` (the warm-up point).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UsageError
from .schedulers import make_scheduler


@torch.no_grad()
def ddim_invert(denoiser: Any, scheduler: Any, image_latent: torch.Tensor, *, steps: int,
                start: int = 0, cond: Any = None) -> torch.Tensor:
    if not 0 <= start < steps:
        raise UsageError(f"inversion needs 0 <= start < steps, got start={start}, steps={steps}")
    from .schedulers import is_flow_matching

    if is_flow_matching(scheduler):
        raise UsageError("DDIM inversion needs a diffusion (epsilon or v-prediction) model; "
                         "flow-matching models (SD3, Flux) are not supported")
    ddim = make_scheduler("ddim", like=scheduler)
    kind = ddim.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise UsageError(f"DDIM inversion supports epsilon and v_prediction models, not {kind!r}")
    ddim.set_timesteps(steps, device=image_latent.device)
    abar = ddim.alphas_cumprod.to(image_latent.device, torch.float64)
    final = torch.as_tensor(ddim.final_alpha_cumprod, dtype=torch.float64)
    taus = ddim.timesteps.tolist()
    x = image_latent
    for i in range(steps - 1, start - 1, -1):
        a_next = abar[taus[i + 1]] if i + 1 < steps else final
        a_here = abar[taus[i]]
        t = ddim.timesteps[i]
        out = denoiser(x, t, cond)
        if kind == "v_prediction":  # eps from v at the current (less noisy) level
            eps = a_next.sqrt().to(x.dtype) * out + (1 - a_next).sqrt().to(x.dtype) * x
        else:
            eps = out
        x0 = (x - (1 - a_next).sqrt().to(x.dtype) * eps) / a_next.sqrt().to(x.dtype)
        x = a_here.sqrt().to(x.dtype) * x0 + (1 - a_here).sqrt().to(x.dtype) * eps
    return x
