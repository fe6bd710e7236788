"""EDICT's invertible sampling and DOODL's exact, constant-memory gradient through it.

Wallace, Gokul, Naik, "EDICT: Exact Diffusion Inversion via Coupled Transformations", CVPR 2023
(arXiv 2211.12446); Wallace, Gokul, Ermon, Naik, "End-to-End Diffusion Latent Optimization
Improves Classifier Guidance" (DOODL), ICCV 2023 (arXiv 2303.13703).

EDICT runs two coupled DDIM chains ``(x, y)``, both starting from the noise ``z``. With DDIM's
``x_prev = a x + b eps`` (``a = sqrt(abar_prev / abar)``, ``b = sqrt(1 - abar_prev) - a sqrt(1 - abar)``)
and the mixing weight ``p`` (0.93 in the papers), one step is::

    x' = a x + b eps(y)          y' = a y + b eps(x')
    x'' = p x' + (1 - p) y'      y'' = p y' + (1 - p) x''

and every line can be solved for its input, so the step is inverted exactly (up to float
rounding) by running the lines backwards. DOODL differentiates a loss of the final ``x`` with
respect to ``z``: the forward pass keeps only the final pair; the backward pass reconstructs each
step's input pair from its output and recomputes that step with grad to pull the gradient through
it. The result equals full backpropagation through the same EDICT chain, with the memory of one
step (two network calls) whatever the number of steps. DOODL's other pieces are here too:
:func:`renormalize` keeps the optimized noise on the Gaussian shell, and ``--reward-augment crop``
is its multi-crop reward.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

from shortcut_diffusion.sampling.schedulers import DDIMStep, ddim_steps, eps_from, prediction_type

MIX = 0.93


def edict_schedule(scheduler: Any, steps: int, device: Any = None) -> list[DDIMStep]:
    """DDIM's coefficients on ``scheduler``'s noise schedule, step by step (refusing a scheduler
    whose chain is not the ODE these methods follow)."""
    return ddim_steps(scheduler, steps, device=device, what="EDICT (doodl) and the adjoint")


def _eps(denoiser: Callable, x: torch.Tensor, step: DDIMStep, cond: Any, kind: str) -> torch.Tensor:
    return eps_from(denoiser(x, step.t, cond), x, step.abar, kind)


def edict_step(denoiser: Callable, x: torch.Tensor, y: torch.Tensor, step: DDIMStep, cond: Any,
               kind: str = "epsilon", p: float = MIX) -> tuple[torch.Tensor, torch.Tensor]:
    x_inter = step.a * x + step.b * _eps(denoiser, y, step, cond, kind)
    y_inter = step.a * y + step.b * _eps(denoiser, x_inter, step, cond, kind)
    x_new = p * x_inter + (1 - p) * y_inter
    return x_new, p * y_inter + (1 - p) * x_new


def edict_unstep(denoiser: Callable, x_new: torch.Tensor, y_new: torch.Tensor, step: DDIMStep, cond: Any,
                 kind: str = "epsilon", p: float = MIX) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact inverse of :func:`edict_step`."""
    y_inter = (y_new - (1 - p) * x_new) / p
    x_inter = (x_new - (1 - p) * y_inter) / p
    y = (y_inter - step.b * _eps(denoiser, x_inter, step, cond, kind)) / step.a
    return (x_inter - step.b * _eps(denoiser, y, step, cond, kind)) / step.a, y


def edict_sample(denoiser: Callable, scheduler: Any, z: torch.Tensor, *, steps: int, cond: Any = None,
                 p: float = MIX) -> tuple[torch.Tensor, torch.Tensor]:
    """The final pair ``(x, y)`` of EDICT sampling from ``x = y = z`` (records a graph if grad is on)."""
    kind = prediction_type(scheduler)
    x = y = z
    for step in edict_schedule(scheduler, steps, device=z.device):
        x, y = edict_step(denoiser, x, y, step, cond, kind, p)
    return x, y


@torch.no_grad()
def edict_invert(denoiser: Callable, scheduler: Any, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                 cond: Any = None, p: float = MIX) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting pair from which EDICT sampling ends at ``(x, y)``; for an image's latent, pass
    it as both (EDICT's inversion of a real image)."""
    kind = prediction_type(scheduler)
    for step in reversed(edict_schedule(scheduler, steps, device=x.device)):
        x, y = edict_unstep(denoiser, x, y, step, cond, kind, p)
    return x, y


class RecomputedGradient(NamedTuple):
    """What a backward pass with recomputed states returns."""

    value: torch.Tensor
    """The loss."""
    grad: torch.Tensor
    """d loss / d z."""
    param_grads: list[Optional[torch.Tensor]]
    """d loss / d each of ``params`` (None where the loss does not depend on it)."""
    info: dict[str, Any]
    """``forward`` and ``backward`` network calls (and, for the adjoint, ``drift``)."""
    final: torch.Tensor
    """The sample the loss was taken at."""


def accumulate(total: list[Optional[torch.Tensor]], grads: Sequence[Optional[torch.Tensor]]) -> None:
    """``total += grads`` element-wise, None counting as zero."""
    for i, g in enumerate(grads):
        if g is not None:
            total[i] = g if total[i] is None else total[i] + g


def doodl_backward(denoiser: Callable, schedule: Sequence[DDIMStep], x: torch.Tensor, y: torch.Tensor,
                   gx: torch.Tensor, gy: torch.Tensor, *, kind: str, cond: Any = None, p: float = MIX,
                   params: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
    """From EDICT's final pair and the loss's gradients there, reconstruct every step's input and
    pull the gradient back through it: ``(d loss / d z, d loss / d params)``."""
    param_grads: list[Optional[torch.Tensor]] = [None] * len(params)
    x, y = x.detach(), y.detach()
    for step in reversed(schedule):
        with torch.no_grad():
            x, y = edict_unstep(denoiser, x, y, step, cond, kind, p)
        x_in, y_in = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        with torch.enable_grad():
            x_out, y_out = edict_step(denoiser, x_in, y_in, step, cond, kind, p)
        gx, gy, *grads = torch.autograd.grad((x_out, y_out), (x_in, y_in, *params), grad_outputs=(gx, gy),
                                             allow_unused=True)
        accumulate(param_grads, grads)
    return gx + gy, param_grads


def doodl_gradient(denoiser: Callable, scheduler: Any, z: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                   *, steps: int, cond: Any = None, p: float = MIX, params: Sequence[torch.Tensor] = ()
                   ) -> RecomputedGradient:
    """The gradient of ``loss(x_final)`` of EDICT sampling from ``z`` w.r.t. ``z`` (and ``params``:
    conditioning tensors or weights the denoiser uses), backpropagated by reconstructing every
    step's input (constant memory in ``steps``)."""
    kind = prediction_type(scheduler)
    schedule = edict_schedule(scheduler, steps, device=z.device)
    with torch.no_grad():
        x, y = edict_sample(denoiser, scheduler, z, steps=steps, cond=cond, p=p)
    x_final = x.detach().requires_grad_(True)
    value = loss(x_final)
    (gx,) = torch.autograd.grad(value, x_final)
    grad, param_grads = doodl_backward(denoiser, schedule, x_final, y, gx, torch.zeros_like(gx), kind=kind,
                                       cond=cond, p=p, params=params)
    return RecomputedGradient(value.detach(), grad, param_grads, doodl_calls(steps), x_final.detach())


def doodl_calls(steps: int) -> dict[str, int]:
    """Network calls of one DOODL gradient: sample (2N), reconstruct + recompute (4N); VJPs (2N)."""
    return {"forward": 2 * steps + 4 * steps, "backward": 2 * steps}


def renormalize(z: torch.Tensor) -> torch.Tensor:
    """``z`` rescaled per sample to the norm ``sqrt(d)`` of standard normal noise (DOODL's projection
    back onto the Gaussian shell after each update)."""
    d = z[0].numel()
    return z * (d ** 0.5 / z.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *[1] * (z.dim() - 1))
