"""Diffusers schedulers by name, fresh per sampling call, and the sampler arithmetic every loop shares.

This is the one module that looks inside a scheduler: noise levels, DDIM's coefficients, input
scaling, the begin index, the eps / v / x0 conversions and the predicted x0 of a step. The
sampling loop, training-free guidance, the recomputing methods (adjoint, EDICT) and DDIM
inversion all use these helpers instead of probing schedulers themselves.

Schedulers carry state (``_step_index``, the model-output history of multistep solvers), so the
sampling loop never steps the caller's scheduler object: it builds a fresh one from the same
config for every call (:func:`fresh_scheduler`). Repeated and interleaved calls therefore cannot
corrupt each other, and a recomputed (checkpointed) network evaluation never touches a scheduler
because only the network call is recomputed, never ``scheduler.step``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
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

from shortcut_diffusion.errors import UsageError

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


# -- the arithmetic shared by every loop ------------------------------------------------------


def init_noise_sigma(scheduler: SchedulerMixin) -> float:
    """What standard normal noise is multiplied by to start sampling (sigma_max for Euler-type)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def sigma_scaled(scheduler: SchedulerMixin) -> bool:
    """Whether the sampler works on ``x / sqrt(abar)`` (Euler and the other sigma schedulers)."""
    return init_noise_sigma(scheduler) != 1.0


def scale_input(scheduler: SchedulerMixin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network input of the latent ``x`` at ``t`` (identity where the scheduler has no scaling)."""
    return scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x


def set_begin_index(scheduler: SchedulerMixin, index: int) -> None:
    """Start a set scheduler at step ``index`` (schedulers that count their steps: Euler, DPM-Solver)."""
    if index and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(index)


def learned_variance(scheduler: SchedulerMixin) -> bool:
    """The network also predicts the variance (its output has twice the channels)."""
    return str(getattr(scheduler.config, "variance_type", "") or "").startswith("learned")


def prediction_type(scheduler: SchedulerMixin) -> str:
    return "flow" if is_flow_matching(scheduler) else scheduler.config.get("prediction_type", "epsilon")


def _level(scheduler: SchedulerMixin, timestep: int) -> torch.Tensor:
    abar = scheduler.alphas_cumprod.to(torch.float64).cpu()
    if timestep >= 0:
        return abar[timestep]
    final = getattr(scheduler, "final_alpha_cumprod", None)
    return torch.as_tensor(1.0 if final is None else float(final), dtype=torch.float64)


def _previous_timestep(scheduler: SchedulerMixin, i: int) -> int:
    """The timestep a set scheduler steps to from its i-th timestep, as its own ``step`` does: DDIM
    goes to ``t - T // N`` whatever the spacing, DDPM and the others to the next listed timestep."""
    t = int(scheduler.timesteps[i])
    if isinstance(scheduler, DDIMScheduler):
        return t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return int(scheduler.timesteps[i + 1]) if i + 1 < len(scheduler.timesteps) else -1


def noise_levels(scheduler: SchedulerMixin) -> torch.Tensor:
    """``abar`` (float64) at each of the set scheduler's timesteps, then after its last step."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        s = sigmas.to(torch.float64).cpu()
        return 1.0 / (1.0 + s.square())
    levels = [_level(scheduler, int(t)) for t in scheduler.timesteps]
    return torch.stack([*levels, _level(scheduler, _previous_timestep(scheduler, len(levels) - 1))])


def step_levels(scheduler: SchedulerMixin) -> list[tuple[float, float]]:
    """``(abar before, abar after)`` of every step of a set scheduler, where its own ``step`` takes
    them (DDIM's ``t - T // N`` included, so linspace and trailing spacings invert exactly)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        levels = noise_levels(scheduler).tolist()
        return list(zip(levels[:-1], levels[1:]))
    return [(float(_level(scheduler, int(t))), float(_level(scheduler, _previous_timestep(scheduler, i))))
            for i, t in enumerate(scheduler.timesteps)]


def sampler_scale(scheduler: SchedulerMixin, start: int) -> float:
    """What the latent at step ``start`` is multiplied by in ``scheduler``'s own scale (1 for
    variance-preserving samplers, ``1 / sqrt(abar)`` for sigma-scaled ones). At step 0 it is 1:
    :func:`~shortcut_diffusion.sampling.loop.sample` applies ``init_noise_sigma`` there itself."""
    if start == 0 or not sigma_scaled(scheduler):
        return 1.0
    return float(noise_levels(scheduler)[start].rsqrt())


def eps_from(output: torch.Tensor, x: torch.Tensor, abar: float, kind: str) -> torch.Tensor:
    """The noise prediction of a network output at the variance-preserving latent ``x`` of level
    ``abar``: ``eps = sqrt(abar) v + sqrt(1 - abar) x`` for v-prediction, the output itself for eps."""
    if kind == "v_prediction":
        return abar ** 0.5 * output + (1 - abar) ** 0.5 * x
    if kind == "epsilon":
        return output
    raise UsageError(f"this needs an epsilon or v_prediction model, not {kind!r}")


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    """The clean sample of the variance-preserving latent ``x`` at level ``abar`` given its noise."""
    return (x - (1 - abar) ** 0.5 * eps) / abar ** 0.5


@dataclass(frozen=True)
class DDIMStep:
    """One deterministic DDIM step ``x_prev = a x + b eps`` (eta 0) of a set schedule."""

    t: torch.Tensor
    a: float
    b: float
    abar: float
    """The noise level at ``t`` (for v-prediction)."""
    abar_prev: float
    """The level the step goes to."""


def check_ode_scheduler(scheduler: SchedulerMixin, what: str) -> None:
    """Refuse a scheduler whose DDIM chain is not the probability-flow ODE that ``what`` (a plural
    subject: the methods) follow."""
    if is_flow_matching(scheduler):
        raise UsageError(f"{what} need a diffusion (epsilon or v) model, not flow matching")
    if scheduler.config.get("clip_sample", False) or scheduler.config.get("thresholding", False):
        raise UsageError(f"{what} follow the ODE, which has no clipping: use a scheduler with "
                         "clip_sample=False and thresholding=False")
    if scheduler.config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
        raise UsageError(f"{what} supports epsilon and v_prediction models, not "
                         f"{scheduler.config.get('prediction_type')!r}")


def ddim_steps(scheduler: SchedulerMixin, steps: int, device: Any = None, what: str = "methods on the DDIM chain",
               **set_timesteps_kwargs: Any) -> list[DDIMStep]:
    """DDIM's coefficients on ``scheduler``'s noise schedule, step by step, each going where
    diffusers' DDIM step goes (``t - T // N``)."""
    check_ode_scheduler(scheduler, what)
    ddim = fresh_scheduler(make_scheduler("ddim", like=scheduler), steps, device=device, **set_timesteps_kwargs)
    out = []
    for t, (abar, abar_prev) in zip(ddim.timesteps, step_levels(ddim)):
        a = (abar_prev / abar) ** 0.5
        out.append(DDIMStep(t, a, (1 - abar_prev) ** 0.5 - a * (1 - abar) ** 0.5, abar, abar_prev))
    return out


def renoise(x_prev: torch.Tensor, abar_t: float, abar_prev: float, z: torch.Tensor,
            scaled: bool) -> torch.Tensor:
    """The forward process from the level ``abar_prev`` back to ``abar_t`` (``abar_t <= abar_prev``),
    in the sampler's own scale (``scaled``: ``x = x0 + sigma * noise``)."""
    if scaled:
        extra = max(noise_std(abar_t, True) ** 2 - noise_std(abar_prev, True) ** 2, 0.0)
        return x_prev + extra ** 0.5 * z
    a = abar_t / abar_prev
    return a ** 0.5 * x_prev + (1 - a) ** 0.5 * z


def noise_std(abar: float, scaled: bool) -> float:
    """The noise level of a latent at ``abar`` in the sampler's own scale."""
    abar = float(abar)
    return ((1 - abar) / abar) ** 0.5 if scaled else max(1 - abar, 0.0) ** 0.5


def check_linear_step(scheduler: SchedulerMixin, step_kwargs: Optional[dict] = None,
                      what: str = "--rollout picard") -> None:
    """Refuse a scheduler whose step is not ``x_next = A x + B output`` with ``A, B`` fixed by the
    schedule: ``what`` runs the recursion itself (DDIM with eta 0, flow-matching Euler)."""
    kwargs = dict(step_kwargs or {})
    config = scheduler.config
    if is_flow_matching(scheduler):
        if config.get("stochastic_sampling", False) or kwargs.get("per_token_timesteps") is not None:
            raise UsageError(f"{what} needs the deterministic flow-matching Euler step (no stochastic_sampling, "
                             "no per-token timesteps)")
        return
    if not isinstance(scheduler, DDIMScheduler):
        raise UsageError(f"{what} follows a flow-matching Euler or a DDIM (eta 0) chain, whose step is linear in "
                         f"the latent and the network output, not {type(scheduler).__name__}: sample with "
                         "--scheduler flow-euler or ddim")
    if float(kwargs.get("eta", 0.0) or 0.0) != 0.0:
        raise UsageError(f"{what} follows the deterministic DDIM chain (eta 0): use it without --eta "
                         f"(got eta={kwargs['eta']})")
    if config.get("clip_sample", False) or config.get("thresholding", False):
        raise UsageError(f"{what} needs DDIM without clip_sample or thresholding (they make the step nonlinear)")
    if config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
        raise UsageError(f"{what} supports epsilon and v_prediction models, not {config.get('prediction_type')!r}")


def linear_step_coefficients(scheduler: SchedulerMixin) -> list[tuple[float, float]]:
    """``(A_i, B_i)`` of every step of a set scheduler that :func:`check_linear_step` accepts: its
    own ``step`` gives ``x_{i+1} = A_i x_i + B_i output_i``.

    DDIM (eta 0) goes ``x_next = sqrt(abar') x0 + sqrt(1 - abar') eps``; with epsilon prediction
    ``A = sqrt(abar' / abar)``, ``B = sqrt(1 - abar') - A sqrt(1 - abar)``, with v-prediction
    (``x0 = sqrt(abar) x - sqrt(1 - abar) v``, ``eps = sqrt(abar) v + sqrt(1 - abar) x``)
    ``A = sqrt(abar' abar) + sqrt((1 - abar')(1 - abar))``, ``B = sqrt((1 - abar') abar) - sqrt(abar' (1 - abar))``.
    Flow-matching Euler goes ``x_next = x + (sigma' - sigma) v``: ``A = 1``, ``B = sigma' - sigma``.
    The square roots are rounded as diffusers' DDIM rounds them (float32 scalars), so the recursion
    reproduces the scheduler's own step to float64 rounding."""
    if is_flow_matching(scheduler):
        sigmas = scheduler.sigmas.to(torch.float64).cpu().tolist()
        return [(1.0, sigmas[i + 1] - sigmas[i]) for i in range(len(scheduler.timesteps))]
    v = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    out = []
    for abar, prev in step_levels(scheduler):
        sa, sb, sp, sq = (_root32(abar), _root32(1 - torch.tensor(abar, dtype=torch.float32)), _root32(prev),
                          _root32(1 - torch.tensor(prev, dtype=torch.float32)))
        out.append((sp * sa + sq * sb, sq * sa - sp * sb) if v else (sp / sa, sq - sp * sb / sa))
    return out


def _root32(value: Any) -> float:
    """``sqrt(value)`` computed in float32, as the scheduler's float32 noise levels are."""
    return float(torch.as_tensor(value, dtype=torch.float32).sqrt())
