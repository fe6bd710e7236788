"""Per-sample best-iterate selection of a latent run (``--select``): early stopping on realism.

``last`` (the default) keeps the last iterate. ``own-samples`` keeps, for each sample, the iterate
whose image is nearest (Euclidean pixel distance) to the model's own samples of the sample's
target class, among the iterates whose reward has reached ``--select-min-reward``; a sample that
never reaches it keeps the last iterate. The reference is drawn once before the iterations
(:data:`REFERENCE_COUNT` samples per target class, :data:`REFERENCE_STEPS` sampling steps): the
model's idea of a typical digit, not the data set. Nothing here is a reward or a judge: the
selection changes no gradient, only which of the iterates already computed is returned.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from shortcut_diffusion.errors import UsageError

SELECTIONS = ("last", "own-samples")
REFERENCE_COUNT = 128
REFERENCE_STEPS = 10
DEFAULT_MIN_REWARD = -0.1
"""log(0.905): on a ``digit-class:K`` reward, the classifier gives K at least 90%."""


def check_selection(select: str, condition_kind: str = "class") -> None:
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    if select == "own-samples" and condition_kind != "class":
        raise UsageError("--select own-samples compares with the model's own samples of a class: it needs a "
                         f"class-conditional model, this one is conditioned by {condition_kind}")


def label_key(label: Any) -> str:
    """What tells two targets apart: the class, and a moving digit's direction (``7:left``)."""
    return repr(label)


@torch.no_grad()
def own_samples(model: Any, classes: Sequence[Any], *, seed: int, count: int = REFERENCE_COUNT,
                steps: int = REFERENCE_STEPS) -> dict[str, torch.Tensor]:
    """``count`` plain samples of each label in ``classes`` (flattened, on the CPU), by
    :func:`label_key`."""
    from shortcut_diffusion.tasks.generate import generate

    reference = {}
    for key, label in sorted({label_key(c): c for c in classes}.items()):
        k = int(label)
        noise = torch.randn((count, *model.sample_shape), generator=torch.Generator().manual_seed(seed + k))
        images = generate(model, noise.to(model.device), [label] * count, steps=steps, seed=seed + k).images
        reference[key] = images.float().cpu().flatten(1)
    return reference


class NearestOwnSample:
    """Tracks, per sample, the offered latent nearest to the reference among those whose reward
    is at least ``min_reward``."""

    def __init__(self, reference: dict[str, torch.Tensor], target: Sequence[Any], min_reward: float):
        self.reference, self.target, self.min_reward = reference, [label_key(k) for k in target], float(min_reward)
        self.best = None
        self.score = torch.full((len(self.target),), float("inf"))
        self.iteration = [None] * len(self.target)
        self.offers = 0

    def distance(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.detach().float().cpu().flatten(1)
        return torch.stack([torch.cdist(row[None], self.reference[k]).min() for row, k in zip(flat, self.target)])

    def offer(self, latents: torch.Tensor, images: torch.Tensor, rewards: torch.Tensor) -> None:
        score = torch.where(rewards.detach().float().cpu() >= self.min_reward, self.distance(images),
                            torch.tensor(float("inf")))
        better = score < self.score
        if self.best is None:
            self.best = latents.detach().clone()
        self.best[better.to(latents.device)] = latents.detach()[better.to(latents.device)]
        self.score = torch.where(better, score, self.score)
        self.iteration = [self.offers if b else i for b, i in zip(better.tolist(), self.iteration)]
        self.offers += 1

    def chosen(self, last: torch.Tensor) -> torch.Tensor:
        """Each sample's selected latent; ``last`` where none reached the reward."""
        if self.best is None:
            return last
        keep = torch.isfinite(self.score).to(last.device).view(-1, *([1] * (last.dim() - 1)))
        return torch.where(keep, self.best.to(last.device), last)


def make_selection(select: str, model: Any, reward_spec: Any, labels: Sequence[Any], *, seed: int,
                   min_reward: float = DEFAULT_MIN_REWARD) -> Optional[NearestOwnSample]:
    """The selection ``select`` names for a run of ``reward_spec`` on ``labels``, or None (``last``).
    Each sample's target class is the reward's (``digit-class:K``), else its own label; a moving
    digit's target keeps its label's direction (the reference is the model's 7s moving that way)."""
    check_selection(select, model.condition_kind)
    if select == "last":
        return None
    from shortcut_diffusion.tasks.panel import reward_target

    target = [with_direction(k, label) for k, label in zip(reward_target(reward_spec, labels), labels)]
    return NearestOwnSample(own_samples(model, target, seed=seed), target, min_reward)


def with_direction(target: int, label: Any) -> Any:
    """``target`` moving as ``label`` does, where the label names a direction of motion."""
    if getattr(label, "direction", None) is None:
        return target
    return type(label)(int(target), label.direction)
