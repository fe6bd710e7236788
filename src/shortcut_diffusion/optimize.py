"""Latent optimization: steer a fixed model's samples by optimizing the latent against a reward.

The optimized variable is the initial noise (``warmup=0``), the latent after ``warmup`` steps run
without grad (the paper's setting, e.g. 45 of 50), or the DDIM inversion of a given image
(editing). Every iteration samples the remaining steps with the chosen gradient estimator
(default SDO), decodes, scores, and takes an Adam step on ``-reward + regularizers`` (summed over
the batch, so every sample's objective is independent). The latent is kept in fp32; ``precision``
runs the network under bf16/fp16 autocast.

>>> from shortcut_diffusion.optimize import optimize_latent  # doctest: +SKIP
>>> result = optimize_latent(model, reward, labels, estimator="sdo", steps=50, iters=30)  # doctest: +SKIP
>>> result.images  # final samples, NCHW in [-1, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .diagnostics import SavedTensorMeter
from .errors import UsageError
from .estimators import GradientEstimator, get_estimator
from .models import conditioning, denoiser_of, model_device, timestep_kwargs
from .sampling import Mode, sample
from .schedulers import make_scheduler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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
    """The optimized latents (the last ones whose objective was finite)."""
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
    """Why the run stopped early (a non-finite objective), or None."""


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _modules(model: Any) -> list[torch.nn.Module]:
    """The model's networks (their weights are not activations of the sampling graph)."""
    pipe = getattr(model, "pipe", None)
    if pipe is not None:
        return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return [model.unet]


def chi_prior(z: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-density of ||z|| under the chi distribution of a standard normal.

    ``(r^2 / 2 - (d - 1) log r) / d`` with ``r = ||z||``: keeps optimized noise on the shell where
    Gaussian noise lives (the norm regularizer of DNO/ReNO), normalised by the dimension ``d``.
    """
    d = z[0].numel()
    r = z.flatten(1).norm(dim=1)
    return (r.square() / 2 - (d - 1) * torch.log(r)) / d


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_latent_options(*, steps: int, warmup: int, iters: int, lr: float, batch: int,
                         prior_weight: float = 0.0, proximity_weight: float = 0.0,
                         optimizes_noise: bool = True, precision: str = "fp32") -> None:
    """Every range check of a latent run, before any work starts."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if steps < 1:
        raise UsageError(f"steps must be positive, got {steps}")
    if not 0 <= warmup < steps:
        raise UsageError(f"warm-up steps must satisfy 0 <= warmup < steps, got warmup={warmup}, steps={steps}")
    if iters < 1:
        raise UsageError(f"iters must be positive, got {iters}")
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"learning rate must be > 0, got {lr}")
    if batch < 1:
        raise UsageError(f"batch must be positive, got {batch}")
    if prior_weight < 0 or proximity_weight < 0:
        raise UsageError("regularizer weights must be >= 0")
    if prior_weight > 0 and not optimizes_noise:
        raise UsageError("the Gaussian prior applies to the initial noise: use it with warmup=0 and no inversion")


def optimize_latent(
    model: Any,
    reward: Callable[[torch.Tensor, Any], torch.Tensor],
    labels: Any,
    *,
    estimator: Union[str, GradientEstimator] = "sdo",
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
    precision: str = "fp32",
    progress: bool = True,
    callback: Optional[Callable[[dict[str, Any], torch.Tensor, torch.Tensor], None]] = None,
    max_seconds: Optional[float] = None,
) -> LatentResult:
    """Optimize latents of ``model`` so that ``reward(decode(sample), labels)`` increases.

    Args:
        model: a loaded model (``denoiser``/``guided``, ``scheduler``, ``cond``, ``decode``,
            ``sample_shape``), e.g. the digits testbed.
        reward: ``reward(images, labels) -> tensor[batch]``, higher is better.
        labels: the conditioning of each sample (class labels on the testbed).
        estimator: gradient estimator or spec (default ``sdo``, kept step ``first``).
        scheduler: scheduler name or object (default: the model's).
        steps, warmup: the schedule length and the steps run without grad before the optimized
            latent. ``init``, when given, is the latent at step ``warmup`` (e.g. an inversion).
        iters, lr, betas, clip_grad: Adam on the latent; ``clip_grad`` clips the gradient norm.
        prior_weight: weight of :func:`chi_prior` on the initial noise (``warmup=0``, no ``init``);
            ``None``: :data:`DEFAULT_PRIOR_WEIGHT` when the initial noise is optimized, else 0.
        proximity_weight: weight of the mean squared pixel distance to the starting samples.
        seed: seed of the initial noise and the scheduler's per-step noise (fixed across iterations).
        callback: called after every iteration with ``(row, latents, images)``.
        max_seconds: also stop once the iterations have taken this long (a wall-clock budget;
            the callback's time is not counted).
    """
    text = bool(len(labels)) and isinstance(labels[0], str)
    labels = list(labels) if text else torch.as_tensor(labels)
    batch = len(labels) if batch is None else batch
    prior_weight = default_prior_weight(prior_weight, warmup == 0 and init is None)
    check_latent_options(steps=steps, warmup=warmup, iters=iters, lr=lr, batch=batch,
                         prior_weight=prior_weight, proximity_weight=proximity_weight,
                         optimizes_noise=warmup == 0 and init is None, precision=precision)
    if len(labels) != batch:
        raise UsageError(f"{len(labels)} labels for a batch of {batch}")
    if init is not None and tuple(init.shape) != (batch, *model.sample_shape):
        raise UsageError(f"init latent has shape {tuple(init.shape)}, expected {(batch, *model.sample_shape)}")
    estimator = get_estimator(estimator, seed=seed) if isinstance(estimator, str) else estimator
    if scheduler is None:
        scheduler = model.scheduler
    elif isinstance(scheduler, str):
        scheduler = make_scheduler(scheduler, like=model.scheduler)
    device = model_device(model)
    denoiser = denoiser_of(model, guidance)
    cond = _detach(conditioning(model, labels))
    labels = labels if text else labels.to(device)
    noise_seed = seed + 1
    timesteps = timestep_kwargs(model, steps)
    kwargs = dict(cond=cond, steps=steps, start=warmup, step_kwargs=step_kwargs, set_timesteps_kwargs=timesteps)

    with torch.no_grad():
        if init is None:
            gen = torch.Generator().manual_seed(seed)
            z0 = torch.randn((batch, *model.sample_shape), generator=gen).to(device)
            if warmup:
                z0 = sample(denoiser, scheduler, z0, cond=cond, steps=steps, stop=warmup,
                            generator=noise_seed, step_kwargs=step_kwargs, set_timesteps_kwargs=timesteps).sample
        else:
            z0 = init.to(device)
        z0 = z0.float()

    def plain(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return model.decode(sample(denoiser, scheduler, z, generator=noise_seed, **kwargs).sample).float().clamp(-1, 1)

    start_images = plain(z0)
    start_rewards = reward(start_images, labels).detach()
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr, betas=tuple(betas))
    frozen = [p for m in _modules(model) for p in m.parameters()]
    history: list[dict[str, Any]] = []
    stopped = None
    last_good = z0.clone()
    bar = tqdm(range(iters), desc=f"latent[{estimator.spec}]", disable=not progress)
    elapsed = 0.0
    for it in bar:
        if max_seconds is not None and elapsed >= max_seconds:
            if torch.isfinite(z.detach()).all():
                last_good = z.detach().clone()
            break
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with SavedTensorMeter(exclude=frozen) as meter, _autocast(device, precision):
            out = sample(denoiser, scheduler, z, estimator=estimator, generator=noise_seed, **kwargs)
        # The reward sees what the user will see: the image clamped to [-1, 1]. (Unclamped pixels
        # beyond the range are an easy reward hack that disappears on display.)
        images = model.decode(out.sample).float().clamp(-1, 1)
        r = reward(images, labels)
        loss_per = -r
        if prior_weight:
            loss_per = loss_per + prior_weight * chi_prior(z)
        if proximity_weight:
            loss_per = loss_per + proximity_weight * (images - start_images).square().flatten(1).mean(1)
        loss = loss_per.sum()
        if not torch.isfinite(loss):
            stopped = f"non-finite objective at iteration {it}; kept the last good latents"
            break
        last_good = z.detach().clone()
        if loss.requires_grad:
            loss.backward()
        if z.grad is not None and clip_grad:
            torch.nn.utils.clip_grad_norm_([z], clip_grad)
        grad_norm = float(z.grad.norm()) if z.grad is not None else 0.0
        opt.step()
        row = {
            "iter": it,
            "reward": float(r.detach().mean()),
            "loss": float(loss.detach()),
            "seconds": time.perf_counter() - began,
            "saved_bytes": meter.bytes,
            "grad_norm": grad_norm,
            "grad_steps": out.plan.count(Mode.GRAD, Mode.CHECKPOINT),
        }
        elapsed += row["seconds"]
        row["wall_clock"] = elapsed
        history.append(row)
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if callback is not None:
            callback(row, z.detach(), images.detach())
    else:
        if torch.isfinite(z.detach()).all():
            last_good = z.detach().clone()
        else:
            stopped = "the last update produced non-finite latents; kept the previous ones"
    if stopped and progress:
        bar.write(f"stopped: {stopped}")
    final_images = plain(last_good)
    final_rewards = reward(final_images, labels).detach()
    if not torch.isfinite(final_rewards).all() and stopped is None:
        stopped = "the final samples have a non-finite reward"
    return LatentResult(last_good.cpu(), final_images.cpu(), start_images.cpu(),
                        final_rewards.cpu(), start_rewards.cpu(), history, stopped)
