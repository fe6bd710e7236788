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
``INPUT_STOP``
    the network call is recorded for everything but its input: it runs on ``x.detach()``, so the
    gradient reaches the weights and the conditioning but stops at the denoiser input (DRTune);
    the scheduler update stays differentiable.

A plan may also end sampling early at a step (``x0_at``) and return that step's predicted clean
sample, as ReFL does.

Plans can differ per sample (``per_sample=True``, or a list of plans, one per row): a batch then
mixes, at one step, rows whose network graph is kept and rows computed without grad (the network
is called once per group of rows). Fine-tuning uses this to keep a different random step for
every sample of a batch.

Randomness comes in as arguments: the scheduler's per-step noise (DDPM, DDIM with eta > 0,
ancestral and SDE solvers) is drawn from ``generator`` only, and the estimators draw their own
choices from their own generators, so two estimators given the same seed see identical noise.
The caller's scheduler is a template and is never stepped (see
:func:`shortcut_diffusion.sampling.schedulers.fresh_scheduler`).
"""

from __future__ import annotations

import contextvars
import copy
import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.schedulers import (accepted_step_kwargs, fresh_scheduler, init_noise_sigma,
                                                    learned_variance, predicted_x0, scale_input, set_begin_index)

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class Mode(enum.Enum):
    """What autograd records for one sampling step."""

    GRAD = "grad"
    CHECKPOINT = "checkpoint"
    DETACH = "detach"
    STOP = "stop"
    INPUT_STOP = "input-stop"


GRAPH_MODES = (Mode.GRAD, Mode.CHECKPOINT, Mode.INPUT_STOP)
"""The modes whose network call keeps its graph."""


@dataclass(frozen=True)
class Plan:
    """Per-step modes for one sampling call, and where (if anywhere) it returns predicted x0."""

    modes: tuple[Mode, ...]
    x0_at: Optional[int] = None

    def __post_init__(self) -> None:
        if not all(isinstance(m, Mode) for m in self.modes):
            raise UsageError("a plan's modes must all be shortcut_diffusion.sampling.loop.Mode values")
        if self.x0_at is not None and not 0 <= self.x0_at < len(self.modes):
            raise UsageError(f"x0_at={self.x0_at} is outside the plan's {len(self.modes)} steps")

    @classmethod
    def uniform(cls, mode: Mode, steps: int) -> "Plan":
        return cls((mode,) * steps)

    def count(self, *modes: Mode) -> int:
        """Steps run in any of ``modes`` (steps after ``x0_at`` are not run)."""
        last = len(self.modes) if self.x0_at is None else self.x0_at + 1
        return sum(m in modes for m in self.modes[:last])

    @property
    def graph_steps(self) -> int:
        """Steps whose network call keeps its graph."""
        return self.count(*GRAPH_MODES)

    @property
    def reaches_input(self) -> bool:
        """Whether the gradient reaches the sampled latent: no step that is run stops it."""
        return self.count(Mode.STOP) == 0


class Estimator(Protocol):
    """Anything that makes a plan for a given number of steps."""

    def plan(self, steps: int) -> Plan: ...


@dataclass
class SampleOutput:
    sample: torch.Tensor
    """The final sample (or, for a plan with ``x0_at``, that step's predicted x0)."""
    plan: Plan
    """The plan that was run (random estimators draw a new one per call); with per-sample plans,
    the first row's."""
    plans: Optional[tuple[Plan, ...]] = None
    """One plan per row when the plans differed between rows, else None."""
    info: dict[str, Any] = field(default_factory=dict)
    """What a gradient method reports about the call (network calls, the memory its backward pass
    held at once: filled in when that pass runs)."""


def derived_generator(*key: Any) -> torch.Generator:
    """A generator seeded by a hash of ``key``: independent streams that depend on the key only."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def step_noise_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s noise for the integer ``seed``: a function of both only."""
    return derived_generator("sdo-step-noise", seed, step)


def _step_generators(generator: Union[torch.Generator, int, None]) -> Callable[[int], Optional[torch.Generator]]:
    """Step index -> the generator of that step's noise.

    An int seed gives every step its own stream (:func:`step_noise_generator`), so the noise of
    step i is the same whether a call starts at step 0 or resumes at a warm-up point. A
    ``torch.Generator`` is consumed in order, as diffusers' pipelines do."""
    if generator is None or isinstance(generator, torch.Generator):
        return lambda step: generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return lambda step: step_noise_generator(generator, step)
    raise UsageError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


def _call_network(
    denoiser: Denoiser, x_in: torch.Tensor, t: torch.Tensor, cond: Any, mode: Mode
) -> torch.Tensor:
    if mode is Mode.INPUT_STOP and torch.is_grad_enabled():
        return denoiser(x_in.detach(), t, cond)
    if mode is Mode.GRAD or not torch.is_grad_enabled():
        return denoiser(x_in, t, cond)
    if mode is Mode.CHECKPOINT:
        return checkpoint(denoiser, x_in, t, cond, use_reentrant=False)
    with torch.no_grad():  # DETACH and STOP: the output is a constant
        return denoiser(x_in, t, cond)


def _rows(value: Any, index: torch.Tensor, batch: int) -> Any:
    """The rows ``index`` of a batched conditioning (tensors, dicts, lists); broadcast values pass."""
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, Mapping):
        return {k: _rows(v, index, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return type(value)(value[i] for i in index.tolist())
    return value


_ROWS: contextvars.ContextVar[Optional[tuple[torch.Tensor, int]]] = contextvars.ContextVar("sdo_rows", default=None)


def current_rows() -> Optional[tuple[torch.Tensor, int]]:
    """Inside a network call on a subset of a batch's rows (per-sample plans): ``(index, batch)``.

    A denoiser holding state with one row per sample of the whole batch (a full-batch unconditional
    embedding) selects its rows with it."""
    return _ROWS.get()


class _RowsDenoiser:
    """``denoiser`` called on the rows ``index`` of a batch of ``batch``: :func:`current_rows` says
    which while it runs (also when a checkpoint recomputes it in the backward pass)."""

    def __init__(self, denoiser: Denoiser, index: torch.Tensor, batch: int):
        self.denoiser, self.rows = denoiser, (index, batch)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        token = _ROWS.set(self.rows)
        try:
            return self.denoiser(x, t, cond)
        finally:
            _ROWS.reset(token)


def call_on_rows(denoiser: Denoiser, x_in: torch.Tensor, t: torch.Tensor, cond: Any, index: torch.Tensor,
                 batch: int) -> torch.Tensor:
    """``denoiser`` on ``x_in``, whose rows are the rows ``index`` of a batch of ``batch`` (rows may
    repeat: one batched call over several steps of a trajectory); the conditioning is taken by rows
    and :func:`current_rows` says which while it runs."""
    return _RowsDenoiser(denoiser, index, batch)(x_in, t, _rows(cond, index, batch))


def _call_network_rows(
    denoiser: Denoiser, x_in: torch.Tensor, t: torch.Tensor, cond: Any, modes: list[Mode]
) -> torch.Tensor:
    """One network call per group of rows sharing a mode; the outputs back in row order."""
    kind = {Mode.GRAD: Mode.GRAD, Mode.CHECKPOINT: Mode.CHECKPOINT, Mode.INPUT_STOP: Mode.INPUT_STOP,
            Mode.DETACH: Mode.DETACH, Mode.STOP: Mode.DETACH}
    groups: dict[Mode, list[int]] = {}
    for row, mode in enumerate(modes):
        groups.setdefault(kind[mode], []).append(row)
    if len(groups) == 1 or not torch.is_grad_enabled():
        return _call_network(denoiser, x_in, t, cond, next(iter(groups)))
    order, parts = [], []
    for mode, rows in groups.items():
        index = torch.tensor(rows, device=x_in.device)
        parts.append(_call_network(_RowsDenoiser(denoiser, index, len(modes)), x_in[index], t,
                                   _rows(cond, index, len(modes)), mode))
        order += rows
    inverse = torch.empty(len(order), dtype=torch.long, device=x_in.device)
    inverse[torch.tensor(order, device=x_in.device)] = torch.arange(len(order), device=x_in.device)
    return torch.cat(parts)[inverse]


def _detach_rows(x: torch.Tensor, stopped: list[bool]) -> torch.Tensor:
    if all(stopped):
        return x.detach()
    if not any(stopped) or not x.requires_grad:
        return x
    mask = torch.tensor(stopped, device=x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x.detach(), x)


def _check_output(output: Any, x: torch.Tensor, scheduler: Any) -> None:
    if not isinstance(output, torch.Tensor):
        raise UsageError(
            f"the denoiser must return a tensor, got {type(output).__name__}; wrap diffusers models "
            "with an adapter from shortcut_diffusion.models"
        )
    if output.shape == x.shape:
        return
    if learned_variance(scheduler) and output.shape == (x.shape[0], 2 * x.shape[1], *x.shape[2:]):
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


PlanSource = Union[Estimator, Plan, Sequence[Plan], None]


def _resolve_plans(estimator: PlanSource, steps: int, batch: int, per_sample: bool) -> tuple[Plan, ...]:
    """One plan per row, or a single plan shared by every row."""
    if estimator is None:
        plans: tuple[Plan, ...] = (Plan.uniform(Mode.GRAD, steps),)
    elif isinstance(estimator, Plan):
        plans = (estimator,)
    elif isinstance(estimator, (list, tuple)):
        plans = tuple(estimator)
        if len(plans) != batch or not all(isinstance(p, Plan) for p in plans):
            raise UsageError(f"a list of plans needs one Plan per sample: {batch} rows, got {len(plans)} items")
    else:
        plans = tuple(estimator.plan(steps) for _ in range(batch if per_sample else 1))
    for plan in plans:
        if len(plan.modes) != steps:
            raise UsageError(f"the plan has {len(plan.modes)} steps but {steps} steps are sampled")
    return plans if len(set(plans)) > 1 else plans[:1]


@dataclass
class StepResult:
    """What one scheduler step gave: the next latent, the predicted clean sample, the network output."""

    prev_sample: torch.Tensor
    x0: torch.Tensor
    output: torch.Tensor


class GuidedStep:
    """Step ``i`` of a sampling call, handed to a ``step_hook`` (training-free guidance): the hook
    calls ``step(x)`` (any number of times, with a new ``repeat`` index for each time-travel
    repetition) and returns the latent the loop goes on with.

    Every call steps a copy of the scheduler as it was before step ``i``, so a repeated step sees
    the same solver history; the copy of the last call is the one the loop continues with. Grad
    mode is the hook's to choose."""

    def __init__(self, i: int, t: torch.Tensor, x: torch.Tensor, cond: Any, sched: Any, denoiser: Denoiser,
                 step_kwargs: dict[str, Any], noise_for: Optional[Callable[[int, int], Any]]):
        self.i, self.t, self.x, self.cond = i, t, x, cond
        self.scheduler = sched
        self._before, self._denoiser, self._kwargs, self._noise_for = copy.deepcopy(sched), denoiser, step_kwargs, noise_for

    def step(self, x: torch.Tensor, repeat: int = 0) -> StepResult:
        sched = copy.deepcopy(self._before)
        kwargs = dict(self._kwargs)
        if self._noise_for is not None:
            kwargs["generator"] = self._noise_for(self.i, repeat)
        output = self._denoiser(scale_input(sched, x, self.t), self.t, self.cond)
        _check_output(output, x, sched)
        out = sched.step(output, self.t, x, return_dict=True, **kwargs)
        self.scheduler = sched
        return StepResult(out.prev_sample, predicted_x0(sched, out, x, output, self.t), output)


StepHook = Callable[[GuidedStep], torch.Tensor]


def _setup(scheduler: Any, x: torch.Tensor, steps: int, start: int, stop: Optional[int],
           step_kwargs: Optional[dict[str, Any]], set_timesteps_kwargs: Optional[dict[str, Any]]):
    """The set scheduler, the checked step range and step arguments, and the starting latent."""
    sched = fresh_scheduler(scheduler, steps, device=x.device, **(set_timesteps_kwargs or {}))
    stop = steps if stop is None else stop
    if not 0 <= start < stop <= steps:
        raise UsageError(f"need 0 <= start < stop <= steps, got start={start}, stop={stop}, steps={steps}")
    set_begin_index(sched, start)
    step_kwargs = dict(step_kwargs or {})
    accepted = accepted_step_kwargs(sched)
    unknown = sorted(set(step_kwargs) - accepted)
    if unknown:
        raise UsageError(f"{type(sched).__name__}.step does not accept {', '.join(unknown)}")
    if start == 0 and init_noise_sigma(sched) != 1.0:
        # ``x`` is standard normal noise; schedulers such as Euler start from sigma_max (as the
        # pipelines' prepare_latents do). The scaling is part of the differentiable path.
        x = x * init_noise_sigma(sched)
    return sched, stop, step_kwargs, "generator" in accepted, x


def _repeat_noise(generator: Union[torch.Generator, int, None]) -> Callable[[int, int], Any]:
    """(step, repetition) -> that step's noise generator; repetition 0 is the plain loop's."""
    for_step = _step_generators(generator)
    if isinstance(generator, int) and not isinstance(generator, bool):
        return lambda i, r: for_step(i) if r == 0 else derived_generator("sdo-step-noise", generator, i, "repeat", r)
    return lambda i, r: for_step(i)


def sample(
    denoiser: Denoiser,
    scheduler: Any,
    x: torch.Tensor,
    *,
    steps: int,
    estimator: PlanSource = None,
    cond: Any = None,
    generator: Union[torch.Generator, int, None] = None,
    start: int = 0,
    stop: Optional[int] = None,
    step_kwargs: Optional[dict[str, Any]] = None,
    set_timesteps_kwargs: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    progress: bool = False,
    per_sample: bool = False,
    step_hook: Optional[StepHook] = None,
) -> SampleOutput:
    """Sample from ``x`` with ``steps`` scheduler steps; autograd records what ``estimator`` plans.

    Args:
        denoiser: ``denoiser(x_in, t, cond) -> model_output`` (``x_in`` is the scheduler-scaled
            input, ``t`` the scheduler's timestep).
        scheduler: a diffusers scheduler used as a template (copied, never stepped).
        x: the starting latent; it may require grad (it is the optimized variable for latent
            targets). For ``start == 0`` it is standard normal noise (multiplied by the
            scheduler's ``init_noise_sigma``, as pipelines do); for ``start > 0`` the latent at
            step ``start``.
        steps: number of inference steps of the full schedule.
        estimator: an estimator (``.plan(n)``), a :class:`Plan`, a list of plans (one per row),
            or ``None`` for full backpropagation. Plans cover the steps actually run (``start``
            to ``stop``).
        cond: conditioning passed unchanged to the denoiser (it may require grad).
        generator: the scheduler's per-step noise: an int seed (step i's noise is a function of
            the seed and i, whatever ``start`` is, so a run split at a warm-up point equals the
            unsplit run), a ``torch.Generator`` (consumed in order), or None.
        start, stop: run only steps ``start <= i < stop`` of the schedule (warm-up, split runs).
            Multistep solvers restart their history at ``start`` (first order, as diffusers'
            img2img does).
        step_kwargs: extra arguments of ``scheduler.step`` (e.g. ``{"eta": 1.0}`` for DDIM).
        set_timesteps_kwargs: extra arguments of ``scheduler.set_timesteps`` (e.g. ``mu``).
        callback: called after every step with ``{"i", "t", "x", "mode", "output"}`` (``x`` the
            latent after the step, ``output`` the network's output at the step).
        progress: show a progress bar.
        per_sample: draw one plan per row from ``estimator`` (random estimators then keep a
            different step for each sample).
        step_hook: takes every step instead of the plain update (training-free guidance): called
            with a :class:`GuidedStep`, returns the next latent. Plans do not apply to it.
    """
    sched, stop, step_kwargs, noisy, x = _setup(scheduler, x, steps, start, stop, step_kwargs, set_timesteps_kwargs)
    noise_for = _step_generators(generator) if noisy else None
    timesteps = sched.timesteps[start:stop]
    if step_hook is not None:
        if estimator is not None:
            raise UsageError("a step hook takes every step itself: sample with estimator=None")
        repeat_noise = _repeat_noise(generator) if noisy else None
        for i, t in enumerate(tqdm(timesteps, disable=not progress)):
            guided = GuidedStep(start + i, t, x, cond, sched, denoiser, step_kwargs, repeat_noise)
            x, sched = step_hook(guided), guided.scheduler
            if callback is not None:
                callback({"i": start + i, "t": t, "x": x, "mode": None, "output": None})
        return SampleOutput(x, Plan.uniform(Mode.DETACH, stop - start))
    plans = _resolve_plans(estimator, stop - start, len(x), per_sample)
    if estimator is not None and torch.is_grad_enabled():
        _check_differentiable(denoiser, x, cond)
    return _planned_loop(denoiser, sched, x, timesteps, plans, cond=cond, start=start, step_kwargs=step_kwargs,
                         noise_for=noise_for, callback=callback, progress=progress)


def _planned_loop(denoiser: Denoiser, sched: Any, x: torch.Tensor, timesteps: torch.Tensor,
                  plans: tuple[Plan, ...], *, cond: Any, start: int, step_kwargs: dict[str, Any],
                  noise_for: Optional[Callable[[int], Any]], callback: Optional[Callable],
                  progress: bool) -> SampleOutput:
    """The steps of :func:`sample`, each recorded as its plan's mode says."""
    x0_rows: dict[int, torch.Tensor] = {}

    def result(x: torch.Tensor) -> SampleOutput:
        if x0_rows and len(plans) == 1:
            x = x0_rows[0]
        elif x0_rows:
            x = torch.stack([x0_rows[r] if r in x0_rows else x[r] for r in range(len(x))])
        return SampleOutput(x, plans[0], plans if len(plans) > 1 else None)

    for i, t in enumerate(tqdm(timesteps, disable=not progress)):
        # A row whose plan already returned its predicted x0 runs on without a graph.
        modes = [p.modes[i] if p.x0_at is None or i <= p.x0_at else Mode.STOP for p in plans]
        row_modes = modes * len(x) if len(plans) == 1 else modes
        x = _detach_rows(x, [m is Mode.STOP for m in row_modes])
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(m is not Mode.STOP for m in modes)):
            if noise_for is not None:
                step_kwargs["generator"] = noise_for(start + i)
            output = _call_network_rows(denoiser, scale_input(sched, x, t), t, cond, row_modes)
            _check_output(output, x, sched)
            out = sched.step(output, t, x, return_dict=True, **step_kwargs)
            rows = [r for r, p in enumerate(plans) if p.x0_at == i]
            if rows:
                x0 = predicted_x0(sched, out, x, output, t)
                x0_rows.update({r: (x0 if len(plans) == 1 else x0[r]) for r in rows})
                if len(x0_rows) == len(plans):
                    return result(x)
        x = out.prev_sample
        if callback is not None:
            callback({"i": start + i, "t": t, "x": x, "mode": modes[0], "output": output})
    return result(x)
