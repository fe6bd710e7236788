"""One latent-optimization run per method, for the equal wall-clock tables.

Every gradient method (:func:`~shortcut_diffusion.tasks.latent.optimize.optimize_latent`: the per-step
estimators and the recomputing ``adjoint`` and ``doodl``) and training-free guidance,
``freedom[:scale=S,travel=T]``, which spends its compute in one guided sampling pass instead of
iterations (:func:`~shortcut_diffusion.tasks.guide.freedom.freedom_sample`; time travel over the middle 60%
of the steps, 10-40 of 50), get the same seeds, starting noise and wall-clock budget. Each iterate is re-sampled afterwards, outside the clock, with the
method's own sampler. Memory is the peak held for backward by sampling (the reward's graph
excluded, except for guidance, which differentiates the reward inside every step).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from shortcut_diffusion.errors import UsageError


@dataclass
class LatentRun:
    start_images: torch.Tensor
    images: torch.Tensor
    """The final samples (plain sampling of the last iterate, the method's own sampler)."""
    iterates: list[tuple[float, torch.Tensor]]
    """(optimization wall-clock, samples) of every iterate."""
    iterations: int
    seconds_per_iter: float
    saved_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def run_method(model: Any, reward: Callable, labels: torch.Tensor, spec: str, *, seconds: float, steps: int,
               lr: float, seed: int, clock: Optional[Callable[[], float]] = None) -> LatentRun:
    """``spec`` on the initial noise of ``labels`` for ``seconds`` of optimization."""
    if spec.partition(":")[0] == "freedom":
        return _freedom(model, reward, labels, spec, steps=steps, seed=seed)
    from shortcut_diffusion.tasks.generate import generate
    from shortcut_diffusion.gradients import get_method
    from shortcut_diffusion.gradients.picard import with_rollout
    from shortcut_diffusion.tasks.latent.optimize import optimize_latent

    base, _, rollout = spec.partition("+")  # sdo+picard[:every=5,...]: SDO with warm-started Picard rollouts
    rollout, settings = _rollout(rollout or "sequential")
    method = with_rollout(get_method(base, seed=seed), rollout, settings)
    zs: list[tuple[float, torch.Tensor]] = []
    result = optimize_latent(model, reward, labels, estimator=method, steps=steps, iters=10**6, lr=lr, seed=seed,
                             progress=False, max_seconds=seconds, clock=clock,
                             callback=lambda row, z, images: zs.append((row["wall_clock"], z.clone())))

    def resample(z: torch.Tensor, lab: list) -> torch.Tensor:  # the method's own chain
        return generate(model, z, lab, steps=steps, seed=seed + 1, estimator=method, plain=True).images

    with torch.no_grad():  # every iterate in one batch, outside the clock
        images = resample(torch.cat([z for _, z in zs]).to(model.device), labels.repeat(len(zs)).tolist())
    per = images.view(len(zs), len(labels), *images.shape[1:])
    return LatentRun(result.start_images, result.images, [(t, per[i]) for i, (t, _) in enumerate(zs)],
                     len(result.history), statistics.median(r["seconds"] for r in result.history),
                     max(r["saved_bytes"] for r in result.history))


def _rollout(text: str) -> tuple[str, Any]:
    """``picard:every=5,extrapolate=0`` as the rollout's name and its ``PicardSettings``."""
    from shortcut_diffusion.gradients.picard import PicardSettings

    name, _, options = text.partition(":")
    fields = {f.name: f.type for f in dataclasses.fields(PicardSettings)}
    values: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise UsageError(f"{name}: settings are {', '.join(fields)} as key=value, got {item!r}")
        kind = {"int": int, "float": float, "bool": lambda v: bool(int(v))}[str(fields[key])]
        try:
            values[key] = kind(value)
        except ValueError:
            raise UsageError(f"{name}: {key} takes a {fields[key]} (bool: 0 or 1), got {value!r}") from None
    return name, PicardSettings(**values) if values else None


def _freedom(model: Any, reward: Callable, labels: torch.Tensor, spec: str, *, steps: int, seed: int) -> LatentRun:
    from shortcut_diffusion.meters import SavedTensorMeter, model_weights
    from shortcut_diffusion.tasks.generate import generate
    from shortcut_diffusion.tasks.guide.freedom import freedom_sample

    options = {"scale": 1.0, "travel": 1.0}
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key not in options:
            raise UsageError(f"freedom takes scale and travel, got {item!r}")
        options[key] = float(value)
    travel = int(options["travel"])
    window = (steps // 5, 4 * steps // 5) if travel > 1 else (0, 0)  # 10-40 of 50
    noise = torch.randn((len(labels), *model.sample_shape), generator=torch.Generator().manual_seed(seed)).to(model.device)
    with torch.no_grad():
        start = generate(model, noise, labels.tolist(), steps=steps, seed=seed + 1).images
    with SavedTensorMeter(exclude=model_weights(model)) as meter:
        result = freedom_sample(model, noise, labels.tolist(), reward, steps=steps, scale=options["scale"],
                                travel=travel, travel_window=window, seed=seed + 1)
    return LatentRun(start.cpu(), result.images, [(result.seconds, result.images)], 1, result.seconds,
                     meter.peak_bytes, {"network_calls": result.network_calls})
