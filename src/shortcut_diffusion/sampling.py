"""The one sampling loop.

``sample(denoiser, scheduler, x, steps=...)`` runs any diffusers scheduler over a denoiser callable
``denoiser(x, t, cond) -> model_output``. What autograd records at each step is not decided here
but by a :class:`Plan` (made by a gradient estimator, see :mod:`shortcut_diffusion.estimators`),
one :class:`Mode` per step:

``GRAD``
    the network call and the scheduler update are recorded (plain backpropagation);
``CHECKPOINT``
    the network call is wrapped in ``torch.utils.checkpoint`` (its activations are recomputed in
    the backward pass), the scheduler update is recorded;
``DETACH``
    the network is evaluated under ``no_grad`` and its output is a constant, while the scheduler's
    linear update ``x_prev = a_t * x_t + b_t * eps`` stays differentiable: the gradient shortcut;
``STOP``
    nothing is recorded and ``x`` is detached before the step: gradients stop here.

A plan may also end sampling early at a step (``x0_at``) and return that step's predicted clean
sample, as ReFL does.

Randomness comes in as arguments: the scheduler's per-step noise (DDPM, DDIM with eta > 0,
ancestral and SDE solvers) is drawn from ``generator`` only, and the estimators draw their own
choices from their own generators, so two estimators given the same seed see identical noise.
The caller's scheduler is a template and is never stepped (see
:func:`shortcut_diffusion.schedulers.fresh_scheduler`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol, Union

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from .errors import UsageError
from .schedulers import accepted_step_kwargs, fresh_scheduler, predicted_x0

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class Mode(enum.Enum):
    """What autograd records for one sampling step."""

    GRAD = "grad"
    CHECKPOINT = "checkpoint"
    DETACH = "detach"
    STOP = "stop"


@dataclass(frozen=True)
class Plan:
    """Per-step modes for one sampling call, and where (if anywhere) it returns predicted x0."""

    modes: tuple[Mode, ...]
    x0_at: Optional[int] = None

    def __post_init__(self) -> None:
        if not all(isinstance(m, Mode) for m in self.modes):
            raise UsageError("a plan's modes must all be shortcut_diffusion.sampling.Mode values")
        if self.x0_at is not None and not 0 <= self.x0_at < len(self.modes):
            raise UsageError(f"x0_at={self.x0_at} is outside the plan's {len(self.modes)} steps")

    @classmethod
    def uniform(cls, mode: Mode, steps: int) -> "Plan":
        return cls((mode,) * steps)

    def count(self, *modes: Mode) -> int:
        """Steps run in any of ``modes`` (steps after ``x0_at`` are not run)."""
        last = len(self.modes) if self.x0_at is None else self.x0_at + 1
        return sum(m in modes for m in self.modes[:last])


class Estimator(Protocol):
    """Anything that makes a plan for a given number of steps."""

    def plan(self, steps: int) -> Plan: ...


@dataclass
class SampleOutput:
    sample: torch.Tensor
    """The final sample (or, for a plan with ``x0_at``, that step's predicted x0)."""
    plan: Plan
    """The plan that was run (random estimators draw a new one per call)."""


def _as_generator(generator: Union[torch.Generator, int, None]) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    raise UsageError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


def _call_network(
    denoiser: Denoiser, x_in: torch.Tensor, t: torch.Tensor, cond: Any, mode: Mode
) -> torch.Tensor:
    if mode is Mode.GRAD or not torch.is_grad_enabled():
        return denoiser(x_in, t, cond)
    if mode is Mode.CHECKPOINT:
        return checkpoint(denoiser, x_in, t, cond, use_reentrant=False)
    with torch.no_grad():  # DETACH and STOP: the output is a constant
        return denoiser(x_in, t, cond)


def _check_output(output: Any, x: torch.Tensor, scheduler: Any) -> None:
    if not isinstance(output, torch.Tensor):
        raise UsageError(
            f"the denoiser must return a tensor, got {type(output).__name__}; wrap diffusers models "
            "with an adapter from shortcut_diffusion.models"
        )
    if output.shape == x.shape:
        return
    learned = str(getattr(scheduler.config, "variance_type", "") or "").startswith("learned")
    if learned and output.shape == (x.shape[0], 2 * x.shape[1], *x.shape[2:]):
        return
    raise UsageError(
        f"the denoiser returned shape {tuple(output.shape)} for a sample of shape {tuple(x.shape)}"
    )


def _requires_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, Mapping):
        return any(_requires_grad(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_requires_grad(v) for v in value)
    if isinstance(value, torch.nn.Module):
        return any(p.requires_grad for p in value.parameters())
    return False


def _check_differentiable(denoiser: Denoiser, x: torch.Tensor, cond: Any) -> None:
    """An estimator asks for gradients: something must require grad, or backward would fail later.

    Only checked when the denoiser is an ``nn.Module`` (a plain function may close over weights).
    """
    if isinstance(denoiser, torch.nn.Module) and not (_requires_grad(x) or _requires_grad(cond) or _requires_grad(denoiser)):
        raise UsageError(
            "an estimator was given but nothing to differentiate requires grad: call "
            "requires_grad_() on the optimized variable (x, cond or the denoiser's weights), "
            "or sample under torch.no_grad()"
        )


def _resolve_plan(estimator: Union[Estimator, Plan, None], steps: int) -> Plan:
    if estimator is None:
        return Plan.uniform(Mode.GRAD, steps)
    plan = estimator if isinstance(estimator, Plan) else estimator.plan(steps)
    if len(plan.modes) != steps:
        raise UsageError(f"the plan has {len(plan.modes)} steps but {steps} steps are sampled")
    return plan


def sample(
    denoiser: Denoiser,
    scheduler: Any,
    x: torch.Tensor,
    *,
    steps: int,
    estimator: Union[Estimator, Plan, None] = None,
    cond: Any = None,
    generator: Union[torch.Generator, int, None] = None,
    start: int = 0,
    stop: Optional[int] = None,
    step_kwargs: Optional[dict[str, Any]] = None,
    set_timesteps_kwargs: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    progress: bool = False,
) -> SampleOutput:
    """Sample from ``x`` with ``steps`` scheduler steps; autograd records what ``estimator`` plans.

    Args:
        denoiser: ``denoiser(x_in, t, cond) -> model_output`` (``x_in`` is the scheduler-scaled
            input, ``t`` the scheduler's timestep).
        scheduler: a diffusers scheduler used as a template (copied, never stepped).
        x: the starting latent; it may require grad (it is the optimized variable for latent
            targets). For ``start > 0`` it is the latent at step ``start``.
        steps: number of inference steps of the full schedule.
        estimator: an estimator (``.plan(n)``), a :class:`Plan`, or ``None`` for full
            backpropagation. The plan covers the steps actually run (``start`` to ``stop``).
        cond: conditioning passed unchanged to the denoiser (it may require grad).
        generator: seed or generator for the scheduler's per-step noise.
        start, stop: run only steps ``start <= i < stop`` of the schedule (warm-up, split runs).
            Multistep solvers restart their history at ``start`` (first order, as diffusers'
            img2img does).
        step_kwargs: extra arguments of ``scheduler.step`` (e.g. ``{"eta": 1.0}`` for DDIM).
        set_timesteps_kwargs: extra arguments of ``scheduler.set_timesteps`` (e.g. ``mu``).
        callback: called after every step with ``{"i", "t", "x", "mode"}``.
        progress: show a progress bar.
    """
    sched = fresh_scheduler(scheduler, steps, device=x.device, **(set_timesteps_kwargs or {}))
    stop = steps if stop is None else stop
    if not 0 <= start < stop <= steps:
        raise UsageError(f"need 0 <= start < stop <= steps, got start={start}, stop={stop}, steps={steps}")
    if start and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    step_kwargs = dict(step_kwargs or {})
    accepted = accepted_step_kwargs(sched)
    unknown = sorted(set(step_kwargs) - accepted)
    if unknown:
        raise UsageError(f"{type(sched).__name__}.step does not accept {', '.join(unknown)}")
    if "generator" in accepted:
        step_kwargs["generator"] = _as_generator(generator)
    plan = _resolve_plan(estimator, stop - start)
    if estimator is not None and torch.is_grad_enabled():
        _check_differentiable(denoiser, x, cond)
    timesteps = sched.timesteps[start:stop]

    for i, (t, mode) in enumerate(tqdm(list(zip(timesteps, plan.modes)), disable=not progress)):
        if mode is Mode.STOP:
            x = x.detach()
        with torch.set_grad_enabled(torch.is_grad_enabled() and mode is not Mode.STOP):
            x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            output = _call_network(denoiser, x_in, t, cond, mode)
            _check_output(output, x, sched)
            out = sched.step(output, t, x, return_dict=True, **step_kwargs)
            if plan.x0_at == i:
                return SampleOutput(predicted_x0(sched, out, x, output, t), plan)
        x = out.prev_sample
        if callback is not None:
            callback({"i": start + i, "t": t, "x": x, "mode": mode})
    return SampleOutput(x, plan)
