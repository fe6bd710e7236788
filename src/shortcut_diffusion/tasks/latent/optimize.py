"""Latent optimization: steer a fixed model's samples by optimizing the latent against a reward.

The optimized variable is the initial noise (``warmup=0``), the latent after ``warmup`` steps run
without grad (as in the paper's scripts, 45 of 50), or the DDIM inversion of a given image
(editing). Every iteration samples the remaining steps with the chosen gradient method
(default SDO; any :class:`~shortcut_diffusion.gradients.GradientMethod`, the adjoint and DOODL
included), decodes, scores, and takes an Adam step on ``-reward + regularizers`` (summed over
the batch, so every sample's objective is independent), then lets the method project the latent
(DOODL puts the noise back on the Gaussian shell). The latent keeps a float32 master copy;
the network runs in the model's dtype under autocast, and fp16 scales the loss
(:mod:`shortcut_diffusion.precision`).

>>> from shortcut_diffusion.tasks.latent.optimize import optimize_latent  # doctest: +SKIP
>>> result = optimize_latent(model, reward, labels, estimator="sdo", steps=50, iters=30)  # doctest: +SKIP
>>> result.images  # final samples, NCHW in [-1, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from shortcut_diffusion.meters import SavedTensorMeter, budget_clock, model_weights
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import check_optimizer
from shortcut_diffusion.gradients import GradientMethod, get_method, loss_weighted
from shortcut_diffusion.gradients.picard import PicardSettings, with_rollout
from shortcut_diffusion.tasks.generate import detached, frames_to_decode, generate
from shortcut_diffusion.io.interrupts import as_interrupted, deferred
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.precision import DTYPES, Precision
from shortcut_diffusion.rewards.contract import checked
from shortcut_diffusion.rewards.held_out import score
from shortcut_diffusion.sampling.schedulers import make_scheduler

PRECISIONS = dict(DTYPES)
DEFAULT_PRIOR_WEIGHT = 100.0
"""Chi prior weight used when the initial noise is optimized and no weight is given: without it,
Adam drives the noise off the Gaussian shell (norms double within 30 iterations on the testbed)
and the samples become high-contrast blobs that fool the reward."""


def default_prior_weight(weight: Optional[float], optimizes_noise: bool) -> float:
    if weight is not None:
        return float(weight)
    return DEFAULT_PRIOR_WEIGHT if optimizes_noise else 0.0


@dataclass
class LatentResult:
    latents: torch.Tensor
    """The optimized latents (the last ones whose objective and samples were finite)."""
    images: torch.Tensor
    """Their decoded samples, NCHW clamped to [-1, 1] (plain sampling, whatever the estimator).
    Rewards always score the clamped images."""
    start_images: torch.Tensor
    """The samples of the starting latents."""
    rewards: torch.Tensor
    """Per-sample reward of ``images``."""
    start_rewards: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row per iteration: iter, reward, loss, seconds, saved_bytes."""
    stopped: Optional[str] = None
    """Why the run stopped early (a non-finite objective, an interrupt), or None."""
    interrupt: Optional[int] = None
    """The signal that interrupted the iterations (SIGINT for Ctrl-C, SIGTERM), or None; the result
    then holds the last good latents."""
    start_eval_rewards: dict[str, float] = field(default_factory=dict)
    """Mean of each held-out reward (``eval_reward/<spec>``) on ``start_images``."""
    eval_rewards: dict[str, float] = field(default_factory=dict)
    """Mean of each held-out reward on ``images``."""


def chi_prior(z: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-density of ||z|| under the chi distribution of a standard normal.

    ``(r^2 / 2 - (d - 1) log r) / d`` with ``r = ||z||``: keeps optimized noise on the shell where
    Gaussian noise lives (the norm regularizer of DNO/ReNO), normalised by the dimension ``d``.
    """
    d = z[0].numel()
    r = z.flatten(1).norm(dim=1)
    return (r.square() / 2 - (d - 1) * torch.log(r)) / d


def check_latent_options(*, steps: int, warmup: int, iters: int, lr: float, batch: int,
                         prior_weight: float = 0.0, proximity_weight: float = 0.0,
                         optimizes_noise: bool = True, precision: str = "fp32",
                         betas: Sequence[float] = (0.9, 0.999), clip_grad: Optional[float] = None) -> None:
    """Every range check of a latent run, before any work starts."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if steps < 1:
        raise UsageError(f"steps must be positive, got {steps}")
    if not 0 <= warmup < steps:
        raise UsageError(f"warm-up steps must satisfy 0 <= warmup < steps, got warmup={warmup}, steps={steps}")
    if iters < 1:
        raise UsageError(f"iters must be positive, got {iters}")
    check_optimizer(lr, betas, clip_grad)  # the same check as --lr, --betas and --clip-grad
    if batch < 1:
        raise UsageError(f"batch must be positive, got {batch}")
    if not (math.isfinite(prior_weight) and math.isfinite(proximity_weight)) or prior_weight < 0 or proximity_weight < 0:
        raise UsageError("regularizer weights must be >= 0 and finite")
    if prior_weight > 0 and not optimizes_noise:
        raise UsageError("the Gaussian prior applies to the initial noise: use it with warmup=0 and no inversion")


def check_moves_latent(method: GradientMethod, steps: int) -> None:
    """Refuse a method whose gradient stops before the optimized latent: it would never move."""
    if not method.moves_start(steps):
        raise UsageError(f"--estimator {method.spec} stops the gradient before the optimized latent (steps after it "
                         f"are cut off), so the latent would never move; for latents use sdo, full, checkpointed, "
                         f"alignprop or truncated:k=all ({method.name} suits sdo finetune)")


@dataclass
class LatentProblem:
    """What every iteration of one latent run shares: the model, its conditioning, the schedule."""

    model: DiffusionModel
    reward: Callable
    labels: Any
    cond: Any
    scheduler: Any
    steps: int
    warmup: int
    seed: int
    guidance: Optional[float]
    step_kwargs: Optional[dict[str, Any]]
    precision: Precision
    compile: bool = False

    method: Optional[GradientMethod] = None
    eval_rewards: dict[str, Callable] = field(default_factory=dict)
    """Held-out rewards (:mod:`shortcut_diffusion.rewards.held_out`): scored, never optimized."""
    read_frames: bool = False
    """Video models: each step decodes only the frames the reward reads (nothing else reads them)."""
    clock: Callable[[], float] = budget_clock
    """What an iteration's ``seconds`` are read from (default :func:`~shortcut_diffusion.meters.budget_clock`;
    ``time.process_time``: CPU time, for measurements on a shared machine)."""

    def held_out(self, images: torch.Tensor) -> dict[str, float]:
        return score(self.eval_rewards, images, self.labels)

    def generate(self, z: torch.Tensor, estimator: Any = None, **options: Any):
        return generate(self.model, z, steps=self.steps, estimator=estimator, guidance=self.guidance,
                        scheduler=self.scheduler, cond=self.cond, seed=self.seed + 1, start=self.warmup,
                        step_kwargs=self.step_kwargs, precision=self.precision, compile=self.compile, **options)

    @torch.no_grad()
    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Plain samples of the latents ``z`` (what the user sees), with the method's own chain."""
        return self.generate(z, self.method, plain=True).images


def starting_latent(problem: LatentProblem, batch: int, init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The latent at step ``warmup``: ``init``, or seeded noise run ``warmup`` steps without grad."""
    model = problem.model
    if init is not None:
        return init.to(model.device).float()
    z = torch.randn((batch, *model.sample_shape), generator=torch.Generator().manual_seed(problem.seed))
    z = z.to(model.device)
    if problem.warmup:
        with torch.no_grad(), problem.precision.autocast():
            z = generate(model, z, steps=problem.steps, guidance=problem.guidance, scheduler=problem.scheduler,
                         cond=problem.cond, seed=problem.seed + 1, stop=problem.warmup,
                         step_kwargs=problem.step_kwargs, decode=False, compile=problem.compile).latents
    return z.float()


def objective(z: torch.Tensor, images: torch.Tensor, rewards: torch.Tensor, *, start_images: torch.Tensor,
              prior_weight: float = 0.0, proximity_weight: float = 0.0) -> torch.Tensor:
    """Per-sample loss of the latents ``z``: minus the reward of their ``images``, plus the regularizers."""
    loss_per = -rewards
    if prior_weight:
        loss_per = loss_per + prior_weight * chi_prior(z)
    if proximity_weight:
        loss_per = loss_per + proximity_weight * (images - start_images).square().flatten(1).mean(1)
    return loss_per


def latent_step(problem: LatentProblem, z: torch.Tensor, optimizer: torch.optim.Optimizer, estimator: Any, *,
                start_images: torch.Tensor, prior_weight: float = 0.0, proximity_weight: float = 0.0,
                clip_grad: Optional[float] = None) -> tuple[Optional[dict[str, Any]], torch.Tensor, torch.Tensor]:
    """One optimization step of the latents ``z``; returns ``(row, images, per-sample rewards)``, or
    ``(None, images, rewards)`` without a step when the objective is not finite."""
    began = problem.clock()
    optimizer.zero_grad(set_to_none=True)
    frames = frames_to_decode(problem.model, problem.reward) if problem.read_frames else None
    with SavedTensorMeter(exclude=model_weights(problem.model)) as meter:
        out = problem.generate(z, estimator, frames=frames)
    # The reward sees what the user will see: the image clamped to [-1, 1]. (Unclamped pixels
    # beyond the range are an easy reward hack that disappears on display.)
    r = problem.reward(out.images, problem.labels)
    loss = objective(z, out.images, loss_weighted(r, out.info), start_images=start_images, prior_weight=prior_weight,
                     proximity_weight=proximity_weight).sum()
    if not torch.isfinite(loss):
        return None, out.images, r.detach()
    if loss.requires_grad:
        problem.precision.backward(loss)
        problem.precision.unscale(optimizer)
    if z.grad is not None and clip_grad:
        torch.nn.utils.clip_grad_norm_([z], clip_grad)
    checked_row = sequential_check(problem, z, out.info, lambda zz, images, rewards: objective(
        zz, images, rewards, start_images=start_images, prior_weight=prior_weight, proximity_weight=proximity_weight))
    grad_norm = float(z.grad.norm()) if z.grad is not None else 0.0
    with deferred():  # an interrupt never leaves a half-updated latent
        stepped = problem.precision.step(optimizer) if z.grad is not None else False
        if stepped and problem.method is not None:
            with torch.no_grad():
                z.copy_(problem.method.project(z))
    seconds = problem.clock() - began - checked_row.get("check_seconds", 0.0)
    row = {"reward": float(r.detach().mean()), "loss": float(loss.detach()), "seconds": seconds,
           "saved_bytes": max(meter.bytes, out.info.get("backward_peak_bytes", 0)), "grad_norm": grad_norm,
           "grad_steps": out.plan.graph_steps, **method_info(out.info), **problem.held_out(out.images), **checked_row}
    if problem.precision.scaled:
        row["step_skipped"] = not stepped  # fp16: the scaled gradient overflowed; the scale is lowered
    return row, out.images, r.detach()


def sequential_check(problem: LatentProblem, z: torch.Tensor, info: dict[str, Any], loss_of: Callable
                     ) -> dict[str, Any]:
    """Where a method asks for it (``info["picard_check"]``: a warm-started rollout), the cosine of
    ``z.grad`` to the sequential method's gradient of the same objective, and the seconds that took
    (not counted in the iteration's)."""
    if not info.pop("picard_check", False) or z.grad is None:
        return {}
    began = problem.clock()
    leaf = z.detach().clone().requires_grad_(True)
    out = problem.generate(leaf, problem.method.base)
    loss = loss_of(leaf, out.images, problem.reward(out.images, problem.labels)).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), z.grad.flatten(), dim=0)
    return {"picard_cosine": float(cosine), "check_seconds": problem.clock() - began}


def method_info(info: dict[str, Any]) -> dict[str, Any]:
    """What a method reported about one call, as metric columns (network calls, drift)."""
    names = {"forward": "nfe_forward", "backward": "nfe_backward", "drift": "drift", "rollout": "rollout",
             "picard_sweeps": "picard_sweeps", "picard_change": "picard_change"}
    return {names[k]: v for k, v in info.items() if k in names}


def _labels(labels: Any, batch: Optional[int]) -> tuple[Any, int]:
    text = bool(len(labels)) and isinstance(labels[0], str)
    labels = list(labels) if text else torch.as_tensor(labels)
    return labels, len(labels) if batch is None else batch


def _precision_name(model: DiffusionModel, precision: Union[str, Precision, None]) -> str:
    """The name of ``precision`` (default: the model's dtype)."""
    if precision is None:
        return {v: k for k, v in DTYPES.items()}[model.dtype]
    return precision.name if isinstance(precision, Precision) else precision


def _precision(precision: Union[str, Precision, None], name: str, model: DiffusionModel) -> Precision:
    return precision if isinstance(precision, Precision) else Precision(name, model.device)


def _check_call(model: DiffusionModel, labels: Any, init: Optional[torch.Tensor], **options: Any) -> None:
    """The checks of :func:`optimize_latent`'s arguments, before any work."""
    check_latent_options(**options)
    batch = options["batch"]
    if len(labels) != batch:
        raise UsageError(f"{len(labels)} labels for a batch of {batch}")
    if init is not None and tuple(init.shape) != (batch, *model.sample_shape):
        raise UsageError(f"init latent has shape {tuple(init.shape)}, expected {(batch, *model.sample_shape)}")


def optimize_latent(
    model: DiffusionModel,
    reward: Callable[[torch.Tensor, Any], torch.Tensor],
    labels: Any,
    *,
    estimator: Union[str, GradientMethod] = "sdo",
    scheduler: Union[str, Any, None] = None,
    steps: int = 50,
    warmup: int = 0,
    iters: int = 30,
    lr: float = 0.15,
    betas: Sequence[float] = (0.9, 0.999),
    clip_grad: Optional[float] = None,
    prior_weight: Optional[float] = None,
    proximity_weight: float = 0.0,
    init: Optional[torch.Tensor] = None,
    batch: Optional[int] = None,
    seed: int = 0,
    step_kwargs: Optional[dict[str, Any]] = None,
    guidance: Optional[float] = None,
    precision: Union[str, Precision, None] = None,
    progress: bool = True,
    callback: Optional[Callable[[dict[str, Any], torch.Tensor, torch.Tensor], None]] = None,
    max_seconds: Optional[float] = None,
    compile: bool = False,
    eval_rewards: Optional[dict[str, Callable]] = None,
    rollout: str = "sequential",
    picard: Optional[PicardSettings] = None,
    select: Optional[Any] = None,
    clock: Optional[Callable[[], float]] = None,
) -> LatentResult:
    """Optimize latents of ``model`` so that ``reward(decode(sample), labels)`` increases.

    Args:
        model: a loaded :class:`~shortcut_diffusion.models.base.DiffusionModel`.
        reward: ``reward(images, labels) -> tensor[batch]``, higher is better.
        labels: the conditioning of each sample (class indices or prompts).
        estimator: gradient method or spec (default ``sdo``; any of :mod:`shortcut_diffusion.gradients`).
        scheduler: scheduler name or object (default: the model's).
        steps, warmup: the schedule length and the steps run without grad before the optimized
            latent. ``init``, when given, is the latent at step ``warmup`` (e.g. an inversion).
        iters, lr, betas, clip_grad: Adam on the latent; ``clip_grad`` clips the gradient norm.
        prior_weight: weight of :func:`chi_prior` on the initial noise (None: the default, when it is optimized).
        proximity_weight: weight of the mean squared pixel distance to the starting samples.
        seed: seed of the initial noise and the scheduler's per-step noise (fixed across iterations).
        precision: ``fp32``, ``bf16``, ``fp16`` or a ``Precision`` (default: the model's dtype).
        callback: called after every iteration with ``(row, latents, images)``.
        max_seconds, clock: also stop once the iterations have taken ``max_seconds`` on ``clock``
            (default :func:`~shortcut_diffusion.meters.budget_clock`; ``time.process_time``: CPU time).
        compile: run the network calls that record no graph through ``torch.compile``.
        eval_rewards: held-out rewards by name (``eval_reward/<spec>``), scored, never optimized.
        rollout, picard: ``sequential`` (the loop) or ``picard``: SDO's rollout by warm-started
            parallel sweeps with ``picard`` settings (:mod:`shortcut_diffusion.gradients.picard`).
        select: per-sample best-iterate selection (:mod:`.selection`), or None: the last iterate.
    """
    labels, batch = _labels(labels, batch)
    method = with_rollout(get_method(estimator, seed=seed), rollout, picard)
    optimizes_noise = warmup == 0 and init is None
    prior_weight = default_prior_weight(prior_weight, optimizes_noise and method.noise_prior)
    name = _precision_name(model, precision)
    _check_call(model, labels, init, steps=steps, warmup=warmup, iters=iters, lr=lr, batch=batch,
                prior_weight=prior_weight, proximity_weight=proximity_weight, optimizes_noise=optimizes_noise,
                precision=name, betas=betas, clip_grad=clip_grad)
    scheduler = make_scheduler(scheduler, like=model.scheduler) if isinstance(scheduler, str) else scheduler or model.scheduler
    method.check(scheduler, steps, start=warmup, step_kwargs=step_kwargs)
    problem = LatentProblem(model, checked(reward), labels if isinstance(labels, list) else labels.to(model.device),
                            detached(model.conditioning(labels)), scheduler, steps, warmup, seed,
                            guidance, step_kwargs, _precision(precision, name, model), compile, method,
                            {key: checked(r) for key, r in (eval_rewards or {}).items()},
                            read_frames=not eval_rewards and not proximity_weight, clock=clock or budget_clock)
    z0 = starting_latent(problem, batch, init)
    start_images = problem.images(z0)
    start_rewards = problem.reward(start_images, problem.labels).detach()
    z = z0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=tuple(betas))
    regularizers = dict(start_images=start_images, prior_weight=prior_weight, proximity_weight=proximity_weight)
    history, stopped, last_good, current, interrupt = _iterate(
        problem, z, optimizer, method, iters=iters, max_seconds=max_seconds, progress=progress,
        callback=callback, clip_grad=clip_grad, select=select, **regularizers)
    return _result(problem, regularizers, start_rewards, history, stopped, last_good, current, interrupt, select)


def _result(problem: LatentProblem, regularizers: dict[str, Any], start_rewards: torch.Tensor, history: list,
            stopped: Optional[str], last_good: torch.Tensor, current: Optional[torch.Tensor],
            interrupt: Optional[int], select: Optional[Any] = None) -> LatentResult:
    """The run's result: the latents kept (see :func:`_final_samples`; per sample the ``select``ed
    iterate where one is given), their samples and rewards."""
    latents, final_images, final_rewards = _final_samples(problem, last_good, current, regularizers)
    if latents is not current and current is not None and stopped is None:
        stopped = "the last update gave non-finite latents, samples or objective; kept the previous latents"
    if not torch.isfinite(final_rewards).all() and stopped is None:
        stopped = "the final samples have a non-finite reward"
    if select is not None:
        select.offer(latents, final_images, final_rewards)
        chosen = select.chosen(latents)
        if not torch.equal(chosen, latents):
            final_images = problem.images(chosen)
            latents, final_rewards = chosen, problem.reward(final_images, problem.labels).detach()
    start_images = regularizers["start_images"]
    return LatentResult(latents.cpu(), final_images.cpu(), start_images.cpu(),
                        final_rewards.cpu(), start_rewards.cpu(), history, stopped, interrupt,
                        problem.held_out(start_images), problem.held_out(final_images))


def _final_samples(problem: LatentProblem, last_good: torch.Tensor, current: Optional[torch.Tensor],
                   regularizers: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(latents, their plain samples, their rewards)``: the last update's latents ``current`` when
    they, their samples and their objective are finite, else ``last_good`` (whose objective was)."""
    if current is not None and torch.isfinite(current).all():
        images = problem.images(current)
        rewards = problem.reward(images, problem.labels).detach()
        if torch.isfinite(images).all() and torch.isfinite(objective(current, images, rewards, **regularizers)).all():
            return current, images, rewards
    images = problem.images(last_good)
    return last_good, images, problem.reward(images, problem.labels).detach()


def _iterate(problem: LatentProblem, z: torch.Tensor, optimizer: torch.optim.Optimizer, estimator: Any, *,
             iters: int, max_seconds: Optional[float], progress: bool, callback: Optional[Callable],
             select: Optional[Any] = None, **step_options: Any) -> tuple[list[dict[str, Any]], Optional[str], torch.Tensor, Optional[torch.Tensor],
                                           Optional[int]]:
    """The iterations: ``(history, why they stopped early or None, the last latents whose objective
    was finite, the latents of the last update when they were never scored (else None), the signal
    that interrupted them or None)``. Ctrl-C and SIGTERM (:mod:`.interrupts`) end them like an early stop."""
    history: list[dict[str, Any]] = []
    stopped, last_good, current, interrupt, elapsed = None, z.detach().clone(), None, None, 0.0
    bar = tqdm(range(iters), desc=f"latent[{estimator.spec}]", disable=not progress)
    try:
        for it in bar:
            if max_seconds is not None and elapsed >= max_seconds:
                break
            evaluated = z.detach().clone()
            row, images, rewards = latent_step(problem, z, optimizer, estimator, **step_options)
            if row is None:
                stopped = f"non-finite objective at iteration {it}; kept the last good latents"
                break
            last_good = evaluated
            if select is not None:  # the latents before this step, their samples and the rewards of the step
                select.offer(evaluated, images.detach(), rewards)
            elapsed += row["seconds"]
            history.append({"iter": it, **row, "wall_clock": elapsed})
            bar.set_postfix(reward=f"{row['reward']:.3f}")
            if callback is not None:
                callback(history[-1], z.detach(), images.detach())
        if stopped is None:
            current = z.detach().clone()
    except KeyboardInterrupt as error:
        interrupted = as_interrupted(error)
        interrupt, stopped = interrupted.signum, f"interrupted ({interrupted.name}); kept the last good latents"
        current = z.detach().clone()  # the last update (complete: see latent_step), kept when it is finite
    bar.close()
    if stopped and progress:
        bar.write(f"stopped: {stopped}")
    return history, stopped, last_good, current, interrupt
