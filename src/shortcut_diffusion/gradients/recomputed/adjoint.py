"""The adjoint method: gradients through DDIM sampling with the states recomputed, not stored.

Pan, Liew, Tan, Feng, Yan, "AdjointDPM: Adjoint Sensitivity Method for Gradient Backpropagation
of Diffusion Probabilistic Models", NeurIPS 2023 (arXiv 2307.10711), discretised on DDIM (the
probability-flow ODE's first-order solver): the adjoint ``a_i = dL/dx_i`` runs backward,
``a_i = (d x_{i+1} / d x_i)^T a_{i+1}``, one vector-Jacobian product of one step per step, and the
state ``x_i`` it needs is recomputed by solving the ODE backward from ``x_{i+1}`` (DDIM inversion)
instead of being stored. Memory is one step's graph whatever N.

Where it drifts: DDIM inversion evaluates the network at ``x_{i+1}`` where the forward step used
``x_i``, so the recomputed trajectory departs from the true one by the change of the network's
output over a step. Few, large steps (small N, high noise) drift most; the drift, reported as the
relative distance between the recomputed start and the true one, shrinks as N grows, and so does
the gap between the adjoint gradient and full backpropagation's.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from shortcut_diffusion.sampling.schedulers import DDIMStep, prediction_type
from shortcut_diffusion.gradients.recomputed.edict import RecomputedGradient, _eps, accumulate, edict_schedule


def _ddim_step(denoiser: Callable, x: torch.Tensor, step: DDIMStep, cond: Any, kind: str) -> torch.Tensor:
    return step.a * x + step.b * _eps(denoiser, x, step, cond, kind)


def _ddim_unstep(denoiser: Callable, x_next: torch.Tensor, step: DDIMStep, cond: Any, kind: str) -> torch.Tensor:
    """The backward ODE step: the network evaluated at the later state (DDIM inversion)."""
    return (x_next - step.b * _eps(denoiser, x_next, step, cond, kind)) / step.a


def ddim_sample(denoiser: Callable, scheduler: Any, z: torch.Tensor, *, steps: int, cond: Any = None) -> torch.Tensor:
    """DDIM (eta 0) sampling from ``z`` on ``scheduler``'s noise schedule: the chain the adjoint
    differentiates (records a graph if grad is on)."""
    kind = prediction_type(scheduler)
    x = z
    for step in edict_schedule(scheduler, steps, device=z.device):
        x = _ddim_step(denoiser, x, step, cond, kind)
    return x


def adjoint_backward(denoiser: Callable, schedule: Sequence[DDIMStep], x_final: torch.Tensor,
                     adjoint: torch.Tensor, *, kind: str, cond: Any = None, params: Sequence[torch.Tensor] = ()
                     ) -> tuple[torch.Tensor, list[Optional[torch.Tensor]], torch.Tensor]:
    """From the final latent and the loss's gradient there, run the adjoint back to the start:
    ``(d loss / d z, d loss / d params, the recomputed start)``."""
    x = x_final.detach()
    param_grads: list[Optional[torch.Tensor]] = [None] * len(params)
    for step in reversed(schedule):
        with torch.no_grad():
            x = _ddim_unstep(denoiser, x, step, cond, kind)
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            x_out = _ddim_step(denoiser, x_in, step, cond, kind)
        adjoint, *grads = torch.autograd.grad(x_out, (x_in, *params), grad_outputs=adjoint, allow_unused=True)
        accumulate(param_grads, grads)
    return adjoint, param_grads, x


def adjoint_gradient(denoiser: Callable, scheduler: Any, z: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                     *, steps: int, cond: Any = None, params: Sequence[torch.Tensor] = ()) -> RecomputedGradient:
    """The gradient of ``loss(x_N)`` of DDIM sampling from ``z`` w.r.t. ``z`` (and ``params``:
    conditioning tensors or weights the denoiser uses), by the adjoint with recomputed states;
    ``info`` has the network calls and the trajectory's drift (``||recomputed z - z|| / ||z||``)."""
    kind = prediction_type(scheduler)
    schedule = edict_schedule(scheduler, steps, device=z.device)
    with torch.no_grad():
        x = ddim_sample(denoiser, scheduler, z, steps=steps, cond=cond)
    x_final = x.detach().requires_grad_(True)
    value = loss(x_final)
    (adjoint,) = torch.autograd.grad(value, x_final)
    grad, param_grads, start = adjoint_backward(denoiser, schedule, x_final, adjoint, kind=kind, cond=cond,
                                                params=params)
    info = {"forward": 3 * steps, "backward": steps, "drift": drift(start, z)}
    return RecomputedGradient(value.detach(), grad, param_grads, info, x_final.detach())


def drift(recomputed: torch.Tensor, z: torch.Tensor) -> float:
    """How far the recomputed start is from the true one, relative to its norm."""
    return float((recomputed - z).norm() / z.norm())
