"""Warm-started parallel (Picard) rollouts: SDO's gradient for latent optimization at less than a
sequential sampling pass per iteration.

Parallel sampling (ParaDiGMS: Shih, Belkhale, Ermon, Sadigh, Anari, "Parallel Sampling of
Diffusion Models", NeurIPS 2023) treats the sampler as a fixed point: with a scheduler whose step
is linear in the latent and the network output given the schedule (DDIM with eta 0, flow-matching
Euler: :func:`~shortcut_diffusion.sampling.schedulers.linear_step_coefficients`),

    x_{i+1} = A_i x_i + B_i f(x_i, t_i),

the trajectory is a function of the start and every step's output. A *sweep* evaluates the network
at every step of a guessed trajectory in one batched call (chunked, ``chunk`` steps a call), then
runs the linear recursion from the start on those outputs (a scan: no network call). Sweeps repeat
until the trajectory changes by less than ``tol`` (the largest per-step RMS change, in latent
units) or ``sweeps`` have run. Each sweep makes one more step exact, so ``n`` sweeps of ``n``
steps are the sequential sampler (``tests/test_picard.py`` checks it in float64).

The sweeps run on the clean-sample form of the same step, ``x_{i+1} = C_i x_i + D_i d_i`` with
``d_i`` the network's prediction of the clean sample (:class:`LinearSchedule`): the fixed point is
the same, but the iteration is not. With epsilon prediction the output is nearly ``x_i`` itself at
high noise, so holding it fixed while the states move is a poor guess, and ``A_0 ... A_{n-1}``
amplifies every error (about 34x over 50 DDIM steps on the digits testbed, where sweeps in that
form moved away from the sequential trajectory); ``C_i`` is a ratio of noise levels, at most 1.

Warm start. Consecutive iterations of latent optimization differ by one optimizer step ``dz``.
Holding the clean-sample predictions fixed, the recursion gives
``x_i(z + dz) = x_i(z) + (C_0 ... C_{i-1}) dz``: the previous trajectory shifted along the linear
path. That shifted guess is the scan of the previous iteration's predictions from the new latent,
which is how it is computed. With ``extrapolate`` (the default) the predictions are not held but
carried on by their last change, ``d(z_t) ~ d(z_{t-1}) + (d(z_{t-1}) - d(z_{t-2}))``: Adam's
consecutive steps are alike, so the predictions move much as they last moved. It costs no network
call. One sweep barely corrects the last steps, where the clean-sample prediction is nearly the
state itself (the sweep's contraction there is close to 1), so the guess's error at those steps is
what the gradient sees; on the digits demo task the extrapolated guess raised the mean cosine of
the warm gradient to the sequential one from 0.64 to 0.76 over 40 iterations (docs/latent.md).

Secant slopes (``secant``, the default) go further for no network call: each step's prediction is
modelled as moving with its input by one number per sample, ``d_i(x) ~ d_i(g_i) + j_i (x - g_i)``,
fitted to the step's last two evaluations (:func:`secant_slopes`), and the sweep's scan uses the
moved predictions (:func:`corrected_scan`); at a fixed point the correction vanishes (mean cosine
0.91). With ``stride`` K a warm sweep evaluates one step in K, rotating, and the others keep their
last evaluation moved along their last slope: 1/K of the sweep's network calls.

The gradient then comes from the cache as in ``sdo:rollout=cached`` (:func:`~.cached.replay`):
the scheduler's updates replayed on the cached outputs, the kept step re-run with its graph. The
first iteration, every ``every``-th one, and the final samples (plain sampling) are full
sequential passes, so the result is an exact sample of the final latent.

This pays off only where the previous trajectory is close: latent optimization. In fine-tuning the
noise is new at every step, so only cold sweeps could help (and only on a GPU, where a batch of
``n`` costs little more than one call); it is refused there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.gradients.base import GradientMethod, Sampling
from shortcut_diffusion.gradients.cached import Rollout, replay
from shortcut_diffusion.sampling.loop import SampleOutput, call_on_rows
from shortcut_diffusion.sampling.schedulers import (check_linear_step, fresh_scheduler, init_noise_sigma,
                                                    is_flow_matching, linear_step_coefficients, step_levels)

ROLLOUTS = ("sequential", "picard")


@dataclass(frozen=True)
class PicardSettings:
    """The settings of ``--rollout picard`` (``--picard-*``)."""

    sweeps: int = 1
    """Parallel sweeps at most per iteration."""
    tol: float = 1e-3
    """Stop sweeping once no step's latent moves by more than this RMS (latent units)."""
    every: int = 10
    """A full sequential pass every this many iterations (0: only the first)."""
    check: int = 0
    """Every this many iterations, also compute the sequential SDO gradient and report the cosine
    (``picard_cosine``); 0: never. It costs a sequential pass and a backward pass more."""
    chunk: int = 0
    """Steps per batched network call of a sweep (0: the whole trajectory in one call)."""
    extrapolate: bool = True
    """Warm-start from the clean-sample predictions carried on by their last change between
    iterations (False: held as they were)."""
    secant: bool = True
    """Move each prediction along its step's secant slope in the sweep's scan (False: held)."""
    stride: int = 1
    """A warm sweep evaluates every this-many-th step (rotating from one iteration to the next); the
    others keep their last evaluation, moved along their last secant slope."""

    def __post_init__(self) -> None:
        for name in ("extrapolate", "secant"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"--picard-{name} is on or off, got {getattr(self, name)!r}")
        for name in ("sweeps", "every", "check", "chunk", "stride"):
            value = getattr(self, name)
            low = 1 if name in ("sweeps", "stride") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"--picard-{name} must be a whole number >= {low}, got {value!r}")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise UsageError(f"--picard-tol must be >= 0 and finite, got {self.tol}")


class LinearSchedule:
    """The steps a sampling call runs, as linear recursions: ``x_{i+1} = A_i x_i + B_i f_i`` on the
    network output ``f_i`` (``step``) and ``x_{i+1} = C_i x_i + D_i d_i`` on the prediction of the
    clean sample ``d_i`` (``data``), related at each step by ``f_i = p_i x_i + q_i d_i``.

    The sweeps run in the second form. Both have the same fixed point, but holding ``d`` fixed while
    the states move is a far better guess than holding ``f``: with epsilon prediction ``f`` is nearly
    ``x_i`` itself at high noise, so ``A_0 ... A_{n-1}`` amplifies a move of the start (about 34x
    over 50 DDIM steps) that the sampler's own trajectory does not make, whereas ``C_i`` (the ratio
    of the noise levels) never exceeds 1."""

    def __init__(self, scheduler: Any, start: int, stop: int):
        self.timesteps = scheduler.timesteps[start:stop]
        self.step = linear_step_coefficients(scheduler)[start:stop]
        p, q = zip(*data_relation(scheduler)[start:stop])
        self.data = [(a + b * pi, b * qi) for (a, b), pi, qi in zip(self.step, p, q)]
        self.p, self.q = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)

    def _pq(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (like.dim() - 1)
        return self.p.to(like.device, like.dtype).view(shape), self.q.to(like.device, like.dtype).view(shape)

    def to_data(self, outputs: torch.Tensor, states: torch.Tensor, steps: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """The clean-sample predictions of the network ``outputs`` at ``states`` (``[n + 1, ...]``), of
        every step or of the steps ``steps`` only (``outputs``: one row per step given)."""
        p, q = self._pq(outputs)
        inputs = states[:-1]
        if steps is not None:
            p, q = p.index_select(0, steps.to(p.device)), q.index_select(0, steps.to(q.device))
            inputs = states.index_select(0, steps)
        return (outputs - p * inputs.to(outputs.dtype)) / q

    def to_outputs(self, data: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The network outputs that give the clean-sample predictions ``data`` at ``states``."""
        p, q = self._pq(data)
        return p * states[:-1].to(data.dtype) + q * data


def data_relation(scheduler: Any) -> list[tuple[float, float]]:
    """``(p_i, q_i)`` with ``f_i = p_i x_i + q_i d_i`` at every step of a set scheduler that
    :func:`check_linear_step` accepts: epsilon ``f = (x - sqrt(abar) d) / sqrt(1 - abar)``,
    v-prediction ``f = (sqrt(abar) x - d) / sqrt(1 - abar)``, flow matching ``f = (x - d) / sigma``."""
    if is_flow_matching(scheduler):
        sigmas = scheduler.sigmas.to(torch.float64).cpu().tolist()
        return [(1 / sigma, -1 / sigma) for sigma in sigmas[:len(scheduler.timesteps)]]
    v = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    out = []
    for abar, _ in step_levels(scheduler):
        root, rest = math.sqrt(abar), math.sqrt(1 - abar)
        out.append((root / rest, -1 / rest) if v else (1 / rest, -root / rest))
    return out


def scan(z: torch.Tensor, outputs: torch.Tensor, coefficients: list[tuple[float, float]]) -> torch.Tensor:
    """The trajectory ``[x_0 = z, x_1, ..., x_n]`` of ``x_{i+1} = A_i x_i + B_i outputs[i]``."""
    states = [z]
    for (a, b), output in zip(coefficients, outputs):
        states.append(a * states[-1] + b * output.to(z.dtype))
    return torch.stack(states)


@torch.no_grad()
def sweep(sampling: Sampling, states: torch.Tensor, timesteps: torch.Tensor, chunk: int = 0,
          steps: Optional[list[int]] = None) -> torch.Tensor:
    """The network output of each step in ``steps`` (default: all ``n``) at the trajectory
    ``states`` (``[n + 1, batch, ...]``): ``chunk`` steps per batched call (0: all at once)."""
    steps = list(range(len(timesteps))) if steps is None else steps
    batch = states.shape[1]
    per_call = chunk or len(steps)
    outputs = []
    for first in range(0, len(steps), per_call):
        part = torch.tensor(steps[first:first + per_call], device=states.device)
        k = len(part)
        x_in = states.index_select(0, part).reshape(k * batch, *states.shape[2:])
        t = timesteps.to(states.device).index_select(0, part).repeat_interleave(batch)
        index = torch.arange(batch, device=states.device).repeat(k)
        out = call_on_rows(sampling.denoiser, x_in, t, sampling.cond, index, batch)
        outputs.append(out.reshape(k, batch, *out.shape[1:]))
    return torch.cat(outputs)


@dataclass
class Evaluated:
    """The network's clean-sample predictions ``data`` at the states ``inputs`` (``[n, batch, ...]``)."""

    inputs: torch.Tensor
    data: torch.Tensor
    slopes: Optional[torch.Tensor] = None
    """The secant slopes last fitted at each step (``[n, batch]``), where known."""


def secant_slopes(now: Evaluated, before: Evaluated, low: float = 0.0, high: float = 2.0) -> torch.Tensor:
    """Per step and sample (``[n, batch]``), the scalar ``j`` that best fits
    ``d(x) - d(x') ~ j (x - x')`` between two evaluations (least squares; 0 where the states did not
    move), clamped to ``[low, high]``: a one-number model of each step's Jacobian, about 0 at high
    noise (the prediction hardly follows its input) and about 1 at low noise (it nearly is its input)."""
    dx, dd = (now.inputs - before.inputs).flatten(2), (now.data - before.data).flatten(2)
    norm = dx.square().sum(2)
    moved = norm > 1e-30
    slopes = (dx * dd).sum(2) / torch.where(moved, norm, torch.ones_like(norm))
    return torch.where(moved, slopes, torch.zeros_like(slopes)).clamp(low, high)


def corrected_scan(z: torch.Tensor, evaluated: Evaluated, slopes: Optional[torch.Tensor],
                   coefficients: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states, data)`` of ``x_{i+1} = C_i x_i + D_i d_i`` with each prediction moved along its
    step's slope from where it was evaluated, ``d_i = data_i + j_i (x_i - inputs_i)`` (``slopes``
    None: held, the plain scan). At a fixed point (``x_i = inputs_i``) it is the plain scan."""
    if slopes is None:
        return scan(z, evaluated.data, coefficients), evaluated.data
    states, data = [z], []
    shape = (-1,) + (1,) * (z.dim() - 1)
    for i, (c, d) in enumerate(coefficients):
        moved = slopes[i].view(shape).to(z.dtype) * (states[-1] - evaluated.inputs[i].to(z.dtype))
        data.append(evaluated.data[i].to(z.dtype) + moved)
        states.append(c * states[-1] + d * data[-1])
    return torch.stack(states), torch.stack(data)


def picard_solve(sampling: Sampling, z: torch.Tensor, guess: torch.Tensor, *, sweeps: int, tol: float,
                 chunk: int = 0, secant: bool = False, previous: Optional[Evaluated] = None, stride: int = 1,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], Evaluated]:
    """Picard sweeps from the trajectory ``guess`` (whose first state is ``z``): ``(outputs, data,
    states, info, evaluated)``. The states are the scan of the clean-sample predictions ``data``
    from ``z``, and ``outputs`` the network outputs that give ``data`` at those states, so the
    scheduler's own updates on ``outputs`` retrace ``states``; ``evaluated`` is the last sweep's
    network evaluations. With ``secant``, each scan moves the predictions along secant slopes
    (:func:`secant_slopes`, :func:`corrected_scan`) fitted to the sweep's evaluations and the ones
    before (``previous``, the last iteration's, for the first sweep); without, it holds them. With
    ``stride`` > 1 and ``previous``, a sweep evaluates only every ``stride``-th step (from
    ``offset``); the others keep their previous evaluation and slope. The change is measured after
    each sweep's scan: no network call is spent on the tolerance."""
    _, schedule = linear_schedule(sampling, z)
    states, change, done, forward = guess, float("inf"), 0, 0
    for done in range(1, sweeps + 1):
        now = _evaluate(sampling, schedule, states, chunk, previous, stride, offset + done - 1)
        forward += now.forward
        if secant and previous is not None:
            fitted = secant_slopes(now.evaluated, previous)
            kept = previous.slopes if previous.slopes is not None else torch.zeros_like(fitted)
            now.evaluated.slopes = torch.where(now.fresh.view(-1, 1), fitted, kept.to(fitted))
        new, data = corrected_scan(z, now.evaluated, now.evaluated.slopes if secant else None, schedule.data)
        change = float((new - states).flatten(2).square().mean(2).sqrt().max())
        states, previous = new, now.evaluated
        if change <= tol:
            break
    outputs = schedule.to_outputs(data, states)
    return outputs, data, states, {"picard_sweeps": done, "picard_change": change, "forward": forward}, previous


@dataclass
class _Sweep:
    evaluated: Evaluated
    fresh: torch.Tensor
    """Which steps the sweep evaluated (``[n]`` bool)."""
    forward: int


def _evaluate(sampling: Sampling, schedule: "LinearSchedule", states: torch.Tensor, chunk: int,
              previous: Optional[Evaluated], stride: int, offset: int) -> _Sweep:
    """One sweep's evaluations: every step, or every ``stride``-th one with the rest from ``previous``."""
    n = len(schedule.timesteps)
    steps = list(range(n)) if previous is None or stride <= 1 else [i for i in range(n) if (i + offset) % stride == 0]
    fresh = torch.zeros(n, dtype=torch.bool)
    fresh[steps] = True
    outputs = sweep(sampling, states, schedule.timesteps, chunk, steps)
    index = torch.tensor(steps, device=states.device)
    data = schedule.to_data(outputs, states, index)
    if len(steps) == n:
        return _Sweep(Evaluated(states[:-1], data), fresh, n)
    inputs = previous.inputs.to(states.dtype).index_copy(0, index, states.index_select(0, index))
    full = previous.data.to(data.dtype).index_copy(0, index, data)
    return _Sweep(Evaluated(inputs, full, previous.slopes), fresh, len(steps))


def linear_schedule(sampling: Sampling, x: torch.Tensor) -> tuple[Any, LinearSchedule]:
    """The set scheduler of ``sampling`` and the steps it runs as :class:`LinearSchedule`."""
    sched = fresh_scheduler(sampling.scheduler, sampling.steps, device=x.device,
                            **(sampling.set_timesteps_kwargs or {}))
    return sched, LinearSchedule(sched, sampling.start, sampling.stop or sampling.steps)


@dataclass
class _Cache:
    z: torch.Tensor
    data: torch.Tensor
    """Every step's clean-sample prediction on the last trajectory."""
    change: Optional[torch.Tensor] = None
    """``data`` less the iteration's before (None after the first)."""
    evaluated: Optional[Evaluated] = None
    """The last network evaluations of the trajectory, for the next iteration's secant slopes."""

    def guess(self, extrapolate: bool) -> torch.Tensor:
        """The predictions a warm start assumes at the next latent."""
        return self.data + self.change if extrapolate and self.change is not None else self.data


class PicardRollout(GradientMethod):
    """SDO (``base``) with its rollout found by warm-started Picard sweeps (see the module docstring)."""

    def __init__(self, base: GradientMethod, settings: Optional[PicardSettings] = None):
        if getattr(base, "name", None) != "sdo" or not hasattr(base, "plan"):
            raise UsageError(f"--rollout picard computes SDO's gradient from the cached rollout: use --estimator sdo, "
                             f"not {base.spec}")
        self.base, self.settings = base, settings or PicardSettings()
        self.name, self.paper = base.name, base.paper
        self.noise_prior = base.noise_prior
        self.calls = 0
        self._cache: Optional[_Cache] = None

    def params(self) -> dict:
        return self.base.params()

    def spec_params(self) -> dict:
        return self.base.spec_params()

    def check_task(self, task: str) -> None:
        if task != "latent":
            raise UsageError("--rollout picard is for latent optimization (fine-tuning draws new noise every step, "
                             "so there is no previous trajectory to start from)")

    def check(self, scheduler: Any, steps: int, *, start: int = 0, step_kwargs: Optional[dict] = None,
              task: str = "latent") -> None:
        self.check_task(task)
        self.base.check(scheduler, steps, start=start, step_kwargs=step_kwargs, task=task)
        check_linear_step(scheduler, step_kwargs)
        if init_noise_sigma(scheduler) != 1.0:
            raise UsageError("--rollout picard needs a scheduler without input scaling (ddim, flow-euler)")

    def held_graphs(self, steps: int) -> int:
        return self.base.held_graphs(steps)

    def moves_start(self, steps: int) -> bool:
        return self.base.moves_start(steps)

    def reseed(self, seed: int) -> "PicardRollout":
        self.base.reseed(seed)
        return self

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.project(z)

    def plain(self, sampling: Sampling, x: torch.Tensor) -> SampleOutput:
        return self.base.plain(sampling, x)

    def sequential_due(self, x: torch.Tensor) -> bool:
        """Whether this call is a full sequential pass: the first, every ``every``-th, or one
        whose latent does not match the cache."""
        every = self.settings.every
        cache = self._cache
        return (cache is None or cache.z.shape != x.shape or self.calls == 0
                or (every > 0 and self.calls % every == 0))

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        if not torch.is_grad_enabled():
            return self.base.sample(sampling, x, per_sample)
        if self.sequential_due(x):
            out, data, evaluated, info = self._sequential(sampling, x, per_sample)
        else:
            out, data, evaluated, info = self._warm(sampling, x, per_sample)
        previous = self._cache
        same = previous is not None and previous.data.shape == data.shape
        change = data - previous.data if same else None
        if same and evaluated.slopes is None and self.settings.secant and previous.evaluated is not None:
            evaluated.slopes = secant_slopes(evaluated, previous.evaluated)  # a sequential pass: every step fresh
        self._cache = _Cache(x.detach().clone(), data, change, evaluated)
        check = self.settings.check
        info["picard_check"] = bool(check) and self.calls % check == 0
        self.calls += 1
        out.info.update(info)
        return out

    def _sequential(self, sampling: Sampling, x: torch.Tensor, per_sample: bool
                    ) -> tuple[SampleOutput, torch.Tensor, Evaluated, dict[str, Any]]:
        """The base SDO's own loop, its clean-sample predictions kept for the next warm start."""
        rollout, callback = Rollout(), sampling.callback

        def record(info: dict[str, Any]) -> None:
            rollout.record(info)
            if callback is not None:
                callback(info)

        out = self.base.sample(dataclasses.replace(sampling, callback=record), x, per_sample)
        outputs = torch.stack(list(rollout.outputs.values()))
        _, schedule = linear_schedule(sampling, x)
        z = x.detach()
        states = scan(z, outputs, schedule.step)
        data = schedule.to_data(outputs, states)
        return out, data, Evaluated(states[:-1], data), {"rollout": "sequential", "picard_sweeps": 0,
                                                         "forward": len(outputs)}

    def _warm(self, sampling: Sampling, x: torch.Tensor, per_sample: bool
              ) -> tuple[SampleOutput, torch.Tensor, Evaluated, dict[str, Any]]:
        """Sweeps from the previous trajectory shifted to ``x``, then the gradient from the cache."""
        z = x.detach()
        _, schedule = linear_schedule(sampling, z)
        settings = self.settings
        # held predictions: x_i + (C_0 ... C_{i-1}) dz; extrapolated: plus their last change's effect
        guess = scan(z, self._cache.guess(settings.extrapolate), schedule.data)
        outputs, data, states, info, evaluated = picard_solve(sampling, z, guess, sweeps=settings.sweeps,
                                                              tol=settings.tol, chunk=settings.chunk,
                                                              secant=settings.secant, previous=self._cache.evaluated,
                                                              stride=settings.stride, offset=self.calls)
        rollout = Rollout()
        rollout.outputs = {float(t): output for t, output in zip(schedule.timesteps, outputs)}
        rollout.final = states[-1]
        out = replay(sampling, x, rollout, self.base, per_sample)
        kept = out.plan.graph_steps
        return out, data, evaluated, {"rollout": "picard", **info, "forward": info["forward"] + kept}


def with_rollout(method: GradientMethod, rollout: str, settings: Optional[PicardSettings] = None) -> GradientMethod:
    """``method`` with the rollout ``rollout`` (``sequential``: as it is; ``picard``: :class:`PicardRollout`)."""
    if rollout not in ROLLOUTS:
        raise UsageError(f"--rollout must be sequential or picard, got {rollout!r}")
    if rollout == "sequential":
        return method
    return method if isinstance(method, PicardRollout) else PicardRollout(method, settings)
