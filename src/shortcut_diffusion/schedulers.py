"""Diffusers schedulers by name, fresh per sampling call, and the predicted x0 of a step.

Schedulers carry state (``_step_index``, the model-output history of multistep solvers), so the
sampling loop never steps the caller's scheduler object: it builds a fresh one from the same
config for every call (:func:`fresh_scheduler`). Repeated and interleaved calls therefore cannot
corrupt each other, and a recomputed (checkpointed) network evaluation never touches a scheduler
because only the network call is recomputed, never ``scheduler.step``.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import UsageError

# name -> (class, config overrides). Overrides select the solver variant the name promises.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp-2m-sde": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
    "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
}


def make_scheduler(name: str, like: SchedulerMixin | None = None, **config: Any) -> SchedulerMixin:
    """Build the scheduler called ``name``.

    ``like`` is a scheduler whose config (betas, prediction type, training steps) is carried over
    where the new class understands it, as diffusers' ``from_config`` does; ``config`` overrides.
    """
    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    merged = {**overrides, **config}
    if like is not None:
        # Carry over only what the new class understands (diffusers would warn about the rest).
        known = set(inspect.signature(cls.__init__).parameters)
        base = {k: v for k, v in like.config.items() if k in known}
        return cls.from_config({**base, **merged})
    return cls(**merged)


def fresh_scheduler(
    template: SchedulerMixin,
    steps: int,
    device: torch.device | str | None = None,
    **set_timesteps_kwargs: Any,
) -> SchedulerMixin:
    """A new scheduler with ``template``'s config and ``steps`` timesteps; ``template`` is untouched."""
    if not isinstance(template, SchedulerMixin):
        raise UsageError(f"scheduler must be a diffusers scheduler, got {type(template).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    scheduler = type(template).from_config(template.config)
    try:
        scheduler.set_timesteps(steps, device=device, **set_timesteps_kwargs)
    except ValueError as error:  # diffusers' own range checks, e.g. more steps than training timesteps
        trained = template.config.get("num_train_timesteps")
        if trained is not None and steps > int(trained):
            raise UsageError(f"--steps {steps} is beyond the scheduler's range: {type(template).__name__} samples at "
                             f"most {trained} steps (the timesteps the model was trained on)") from None
        raise UsageError(f"--steps {steps}: {type(template).__name__} cannot sample it ({error})") from None
    return scheduler


def accepted_step_kwargs(scheduler: SchedulerMixin) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


def is_flow_matching(scheduler: SchedulerMixin) -> bool:
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def predicted_x0(
    scheduler: SchedulerMixin,
    step_output: Any,
    x: torch.Tensor,
    model_output: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """The clean sample a step predicts (ReFL's reward input).

    Uses the scheduler's own ``pred_original_sample`` where its step output has one (DDIM, DDPM,
    Euler). Otherwise converts the model output at ``t``: flow matching ``x0 = x - sigma * v`` with
    ``sigma = t / num_train_timesteps``; alpha-parameterised schedulers (DPM-Solver, UniPC, which do
    not scale the model input) by the prediction type with ``abar = alphas_cumprod[t]``.
    """
    x0 = getattr(step_output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    if is_flow_matching(scheduler):
        sigma = t.to(x.dtype) / scheduler.config.num_train_timesteps
        return x - sigma * model_output
    abar = scheduler.alphas_cumprod.to(x.device)[int(t)].to(x.dtype)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * x - (1 - abar).sqrt() * model_output
    if kind == "sample":
        return model_output
    raise UsageError(f"cannot predict x0 for prediction_type {kind!r}")


def scheduler_for(model: Any, name: str, steps: Optional[int] = None) -> SchedulerMixin:
    """Scheduler ``name`` configured like ``model``'s, where the model's parameterization allows it.

    ``auto`` is the model's own scheduler. Flow-matching models (SD3, Flux) sample only with
    ``flow-euler``; diffusion models (epsilon or v-prediction) with every other scheduler.
    With ``steps``, a scheduler that cannot sample that many steps is refused at once.
    """
    scheduler = _scheduler_for(model, name)
    if steps is not None:
        fresh_scheduler(scheduler, steps, **model.timestep_kwargs(steps))
    return scheduler


def _scheduler_for(model: Any, name: str) -> SchedulerMixin:
    own = model.scheduler
    if name == "auto":
        return own
    flow = is_flow_matching(own)
    if flow != (name == "flow-euler"):
        kind = "a flow-matching model" if flow else f"a {own.config.get('prediction_type', 'epsilon')}-prediction diffusion model"
        allowed = "flow-euler" if flow else ", ".join(n for n in SCHEDULERS if n != "flow-euler")
        raise UsageError(f"scheduler {name!r} does not fit {kind}; choose {allowed}")
    return make_scheduler(name, like=own)
