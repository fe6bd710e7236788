"""The one generation path: latent -> (estimator-planned) sampling -> decoded images.

Every command (latent optimization, the fine-tuning train and evaluation steps, gradcheck, bench,
the demo and the testbed's metrics) generates through :func:`generate`, so that what is optimized,
evaluated, checked and measured is what users run: the model's own guided denoiser, its
scheduler's timesteps, its decode, under the run's precision.

>>> import torch
>>> from shortcut_diffusion import generate, load_model
>>> model = load_model("toy")
>>> out = generate(model, torch.randn(2, *model.sample_shape), [3, 4], steps=2)
>>> out.images.shape, out.images.dtype
(torch.Size([2, 1, 16, 16]), torch.float32)
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from shortcut_diffusion.meters import model_weights
from shortcut_diffusion.gradients import GradientMethod, Sampling, as_method
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.rewards.reads import frames_read
from shortcut_diffusion.sampling.loop import Plan, PlanSource, StepHook


class CompiledDenoiser:
    """A denoiser whose calls without grad run through ``torch.compile``; calls that record a
    graph (the steps an estimator keeps, their checkpoint recomputation) run eagerly.

    The sampler evaluates detached and stopped steps under ``torch.no_grad()``, so those, the
    warm-up and plain sampling take the compiled path. Compilation happens on the first such
    call; where it is unavailable (no compiler, an unsupported platform or operator) the failure
    is reported once as a warning and every later call runs eagerly."""

    def __init__(self, denoiser: Callable, mode: Optional[str] = None):
        self.eager = denoiser
        self.compiled = torch.compile(denoiser, dynamic=False, mode=mode)
        self.failure: Optional[str] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.eager(x, t, cond)
        if self.failure is None:
            try:
                return self.compiled(x, t, cond)
            except Exception as error:  # torch._dynamo / inductor errors: fall back, say so once
                self.failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                warnings.warn(f"--compile: torch.compile is unavailable here ({self.failure}); running eagerly",
                              RuntimeWarning, stacklevel=2)
        return self.eager(x, t, cond)


_COMPILED: "weakref.WeakKeyDictionary[DiffusionModel, dict]" = weakref.WeakKeyDictionary()


def compiled_denoiser(model: DiffusionModel, guidance: Optional[float] = None) -> CompiledDenoiser:
    """The model's denoiser at ``guidance``, compiled once per model and guidance (the steps that
    record no graph reuse it across calls and iterations)."""
    cache = _COMPILED.setdefault(model, {})
    key = (model.guidance_scale if guidance is None else float(guidance), model.dtype, id(model.network))
    if key not in cache:
        cache[key] = CompiledDenoiser(model.denoiser(guidance))
    return cache[key]


@dataclass
class Generation:
    latents: torch.Tensor
    """The sampler's output: the final latent (or, for a plan with ``x0_at``, the predicted x0)."""
    images: Optional[torch.Tensor]
    """``latents`` decoded: float32, NCHW, clamped to [-1, 1] (what rewards score and users see);
    None with ``decode=False``."""
    plan: Plan
    """The plan that was run (the first row's, with per-sample plans)."""
    plans: Optional[tuple[Plan, ...]] = None
    """One plan per row where they differed, else None."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the gradient method reported (see :class:`~shortcut_diffusion.sampling.loop.SampleOutput`)."""


def trainable(model: DiffusionModel, cond: Any) -> list[torch.Tensor]:
    """The tensors a sample depends on that require grad: the conditioning's and the network's."""
    found: list[torch.Tensor] = []

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(cond)
    return found + [p for p in model.network.parameters() if p.requires_grad]


def generate(
    model: DiffusionModel,
    noise: torch.Tensor,
    labels: Optional[Sequence[Any]] = None,
    *,
    steps: int,
    estimator: Union[str, GradientMethod, PlanSource] = None,
    guidance: Optional[float] = None,
    scheduler: Any = None,
    cond: Any = None,
    seed: Union[int, torch.Generator, None] = None,
    start: int = 0,
    stop: Optional[int] = None,
    step_kwargs: Optional[dict[str, Any]] = None,
    per_sample: bool = False,
    precision: Any = None,
    wrap: Optional[Callable[[Any], Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    progress: bool = False,
    decode: bool = True,
    compile: bool = False,
    plain: bool = False,
    step_hook: Optional[StepHook] = None,
    frames: Optional[Sequence[int]] = None,
) -> Generation:
    """Sample from ``noise`` (the latent at step ``start``) and decode.

    Args:
        model: a :class:`~shortcut_diffusion.models.base.DiffusionModel`.
        labels: one condition per sample (class indices or prompts); ``cond`` gives a ready
            conditioning instead (e.g. one that requires grad).
        estimator: the gradient method (a :class:`~shortcut_diffusion.gradients.GradientMethod`
            or its spec) or a plan source of :func:`shortcut_diffusion.sampling.loop.sample`: what
            autograd records. ``None`` records everything, so call under ``torch.no_grad()`` for
            plain sampling.
        plain: sample with the method's own chain recording everything (its plain samples under
            ``torch.no_grad()``): the scheduler's loop, or the chain a recomputing method
            differentiates.
        step_hook: takes every step instead of the plain update (training-free guidance, see
            :class:`~shortcut_diffusion.sampling.loop.GuidedStep`).
        guidance: the guidance scale (default: the model's).
        scheduler: a scheduler to sample with (default: the model's own).
        seed: the scheduler's per-step noise (an int makes step i's noise a function of
            ``(seed, i)``, whatever ``start`` is).
        precision: a :class:`~shortcut_diffusion.precision.Precision`; sampling and decoding run
            under its autocast.
        wrap: applied to the denoiser before sampling (e.g. a counting wrapper).
        compile: run the network calls that record no graph (detached steps, warm-up, plain
            sampling) through ``torch.compile`` (:func:`compiled_denoiser`); the kept steps run
            eagerly with their graph.
        frames: video models: decode only what these frames need (the frames a reward reads,
            :func:`shortcut_diffusion.rewards.reads.frames_read`); the others are zeros.
    """
    denoiser = compiled_denoiser(model, guidance) if compile else model.denoiser(guidance)
    if wrap is not None:
        denoiser = wrap(denoiser)
    if cond is None:
        cond = model.conditioning(list(labels) if labels is not None else [""] * len(noise))
    method = as_method(estimator)
    sampling = Sampling(denoiser, scheduler if scheduler is not None else model.scheduler, steps, cond=cond,
                        generator=seed, start=start, stop=stop, step_kwargs=step_kwargs,
                        set_timesteps_kwargs=model.timestep_kwargs(steps), callback=callback, progress=progress,
                        params=trainable(model, cond) if torch.is_grad_enabled() else (),
                        resident=lambda: model_weights(model), labels=labels)
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        if step_hook is not None:
            out = sampling.run(noise, step_hook=step_hook)
        else:
            out = method.plain(sampling, noise) if plain else method.sample(sampling, noise, per_sample)
        images = None if not decode else model.images(out.sample) if frames is None else \
            model.decode_frames(out.sample, frames)
    return Generation(out.sample, images, out.plan, out.plans, out.info)


def frames_to_decode(model: DiffusionModel, reward: Any, draw: bool = True) -> Optional[list[int]]:
    """Video models: the frames ``reward`` reads on its next call (a random choice drawn now, or
    with ``draw=False`` the worst case of one), to pass as :func:`generate`'s ``frames``; None for
    image models and rewards that read every frame."""
    if len(model.image_shape) != 4:
        return None
    return frames_read(reward, model.image_shape[0], draw)


def detached(value: Any) -> Any:
    """A conditioning (a tensor or dicts of them) cut from any graph: a constant to sample with."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


def reward_labels(labels: Sequence[Any], device: Any) -> Any:
    """What rewards receive: prompts as a list, class indices as a tensor on ``device``."""
    if len(labels) and isinstance(labels[0], str):
        return list(labels)
    return torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels, device=device)


@torch.no_grad()
def sample_images(model: DiffusionModel, noise: torch.Tensor, labels: Sequence[Any], *, steps: int,
                  batch: int = 256, **options: Any) -> torch.Tensor:
    """Plain samples (no grad) of ``noise`` in batches of ``batch``: float32 images on the CPU.

    ``options`` go to :func:`generate` (guidance, scheduler, seed, precision, ...)."""
    labels = list(labels)
    images = []
    for i in range(0, len(noise), batch):
        part = noise[i : i + batch].to(model.device)
        images.append(generate(model, part, labels[i : i + batch], steps=steps, **options).images.cpu())
    return torch.cat(images)
