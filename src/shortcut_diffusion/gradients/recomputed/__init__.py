"""Methods that sample without a graph and recompute the states in the backward pass.

``adjoint`` (AdjointDPM, Pan et al., NeurIPS 2023, arXiv 2307.10711; :mod:`.adjoint`) and ``doodl``
(DOODL, Wallace et al., ICCV 2023, arXiv 2303.13703, through EDICT's sampler; :mod:`.edict`)
sample without a graph, then run backward one step at a time, recomputing each state instead of
storing it: by DDIM inversion (the adjoint, approximate) or by EDICT's exact inverse (DOODL). The
memory is one step's graph whatever N. Each differentiates its own chain, DDIM (eta 0) or EDICT,
on the noise schedule of the scheduler it is given, so a diffusion (epsilon or v) model without
clipping is required, and the chain starts from the initial noise.

Both are :class:`~shortcut_diffusion.gradients.base.GradientMethod`\\ s like every other: their
sample is the output of an autograd function whose backward pass is the recomputing one, so the
caller decodes, scores and calls ``backward`` as with any method, and gets gradients for the
latent and for every tensor in :attr:`~shortcut_diffusion.gradients.base.Sampling.params` (the
conditioning, trained weights).
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import torch

from shortcut_diffusion.meters import SavedTensorMeter
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan, SampleOutput
from shortcut_diffusion.sampling.schedulers import prediction_type
from shortcut_diffusion.gradients.base import GradientMethod, Sampling
from shortcut_diffusion.gradients.recomputed.adjoint import adjoint_backward, ddim_sample, drift
from shortcut_diffusion.gradients.recomputed.edict import (doodl_backward, doodl_calls, edict_sample, edict_schedule,
                                                           renormalize)


class RecomputedMethod(GradientMethod):
    """A method whose backward pass recomputes the chain's states one step at a time."""

    calls_per_step: tuple[int, int] = (0, 0)
    """Network (forwards, backwards) per step of one gradient."""
    graphs_per_step: int = 1
    """Network graphs the backward pass holds at once (one step's)."""

    def check(self, scheduler: Any, steps: int, *, start: int = 0, step_kwargs: Optional[dict] = None,
              task: str = "latent") -> None:
        self.check_task(task)
        if steps < 1:
            raise UsageError(f"{self.name} needs at least one step, got {steps}")
        edict_schedule(scheduler, steps)
        if start:
            raise UsageError(f"--estimator {self.name} optimizes the initial noise (its chain starts from it): "
                             "use it without --warmup")
        if any(v for k, v in (step_kwargs or {}).items() if k == "eta"):
            raise UsageError(f"--estimator {self.name} follows the deterministic ODE (DDIM, eta 0): "
                             "use it without --eta")

    def held_graphs(self, steps: int) -> int:
        return self.graphs_per_step

    def check_task(self, task: str) -> None:
        if task.startswith("finetune"):
            raise UsageError(f"--estimator {self.name} optimizes latents (sdo latent); fine-tuning takes full, "
                             "checkpointed, truncated, alignprop, refl, drtune or sdo")

    def chain(self, sampling: Sampling, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The final state(s) of this method's sampler from ``z``."""
        raise NotImplementedError

    def backward(self, sampling: Sampling, z: torch.Tensor, state: Sequence[torch.Tensor], grad: torch.Tensor,
                 info: dict) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
        """``(d loss / d z, d loss / d sampling.params)`` from the final state and ``grad`` there."""
        raise NotImplementedError

    def plain(self, sampling: Sampling, x: torch.Tensor) -> SampleOutput:
        return SampleOutput(self.chain(sampling, x)[0], Plan.uniform(Mode.GRAD, sampling.steps))

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        forwards, backwards = self.calls_per_step
        info: dict[str, Any] = {"forward": forwards * sampling.steps, "backward": backwards * sampling.steps}
        if not torch.is_grad_enabled():
            return self.plain(sampling, x)
        final = _Recomputed.apply(self, sampling, info, x, *sampling.params)
        return SampleOutput(final, Plan.uniform(Mode.GRAD, sampling.steps), info=info)


def _autocast_state(device: torch.device) -> tuple[str, bool, torch.dtype]:
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


class _Recomputed(torch.autograd.Function):
    """The chain without a graph forward; the method's recomputing pass backward."""

    @staticmethod
    def forward(ctx: Any, method: RecomputedMethod, sampling: Sampling, info: dict, z: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            state = method.chain(sampling, z)
        ctx.method, ctx.sampling, ctx.info, ctx.autocast = method, sampling, info, _autocast_state(z.device)
        ctx.save_for_backward(z, *state)
        return state[0].clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        z, *state = ctx.saved_tensors
        kind, enabled, dtype = ctx.autocast
        autocast = torch.autocast(kind, dtype=dtype) if enabled else contextlib.nullcontext()
        resident = ctx.sampling.resident() if ctx.sampling.resident is not None else ()
        with autocast, SavedTensorMeter(exclude=resident) as meter:
            grad_z, param_grads = ctx.method.backward(ctx.sampling, z, state, grad, ctx.info)
        ctx.info["backward_peak_bytes"] = meter.peak_bytes
        return (None, None, None, grad_z, *param_grads)


class Adjoint(RecomputedMethod):
    """AdjointDPM discretised on DDIM: states recomputed by DDIM inversion (approximate)."""

    name = "adjoint"
    paper = "AdjointDPM, arXiv 2307.10711"
    calls_per_step = (3, 1)

    def chain(self, sampling: Sampling, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (ddim_sample(sampling.denoiser, sampling.scheduler, z, steps=sampling.steps, cond=sampling.cond),)

    def backward(self, sampling, z, state, grad, info):
        schedule = edict_schedule(sampling.scheduler, sampling.steps, device=z.device)
        grad_z, param_grads, start = adjoint_backward(sampling.denoiser, schedule, state[0], grad,
                                                      kind=prediction_type(sampling.scheduler), cond=sampling.cond,
                                                      params=sampling.params)
        info["drift"] = drift(start, z)
        return grad_z, param_grads


class DOODL(RecomputedMethod):
    """DOODL: EDICT's coupled invertible sampler, each step's input reconstructed exactly."""

    name = "doodl"
    paper = "DOODL, arXiv 2303.13703"
    noise_prior = False
    graphs_per_step = 2
    calls_per_step = (doodl_calls(1)["forward"], doodl_calls(1)["backward"])

    def chain(self, sampling: Sampling, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return edict_sample(sampling.denoiser, sampling.scheduler, z, steps=sampling.steps, cond=sampling.cond)

    def backward(self, sampling, z, state, grad, info):
        schedule = edict_schedule(sampling.scheduler, sampling.steps, device=z.device)
        x, y = state
        return doodl_backward(sampling.denoiser, schedule, x, y, grad, torch.zeros_like(grad),
                              kind=prediction_type(sampling.scheduler), cond=sampling.cond, params=sampling.params)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """DOODL puts the noise back on the Gaussian shell after each update."""
        return renormalize(z)


__all__ = ["DOODL", "Adjoint", "RecomputedMethod"]
