"""Composing rewards: weighted sums, per-reward normalisation, augmentations against hacking.

- ``--reward "aesthetic:head=a.pth=1,clip=0.5"``: a weighted sum (each term ``SPEC=WEIGHT``);
  add ``normalize=running`` to divide each term by its running standard deviation (an EMA over
  calls, no gradient through it), so that rewards on different scales weigh as their weights say.
- Augmentations (``--reward-augment crop cutout translation color --reward-views 4``): the reward
  of each image is averaged over random differentiable views (random resized crops, cutout
  squares, DiffAugment-style translation and colour jitter), which makes adversarial patterns
  that fool one view of a reward model much less rewarding.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from shortcut_diffusion.errors import UsageError

AUGMENTATIONS = ("crop", "cutout", "translation", "color")


class WeightedSum:
    def __init__(self, terms: Sequence[tuple[float, Callable]], normalize: Optional[str] = None, momentum: float = 0.9):
        if normalize not in (None, "running"):
            raise UsageError(f"normalize must be running, got {normalize!r}")
        self.terms, self.normalize, self.momentum = list(terms), normalize, momentum
        self.stats: list[Optional[tuple[float, float]]] = [None] * len(self.terms)

    def __call__(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        total = 0
        for i, (weight, reward) in enumerate(self.terms):
            value = reward(images, prompts)
            if self.normalize == "running":
                mean, std = float(value.detach().mean()), float(value.detach().std()) if len(value) > 1 else 1.0
                if self.stats[i] is None:
                    self.stats[i] = (mean, max(std, 1e-6))
                else:
                    m, s = self.stats[i]
                    self.stats[i] = (self.momentum * m + (1 - self.momentum) * mean,
                                     self.momentum * s + (1 - self.momentum) * max(std, 1e-6))
                m, s = self.stats[i]
                value = (value - m) / s
            total = total + weight * value
        return total


def parse_weighted(spec: str) -> Optional[tuple[list[tuple[str, float]], Optional[str]]]:
    """``a=1,b:x=0.5[,normalize=running]`` into terms, or None when ``spec`` is a single reward.

    A weighted sum has at least two items, each ``SPEC=WEIGHT`` (a term whose own options hold
    ``=`` keeps them: ``compressibility:quality=50=1``). Terms with several options of their own
    are separated by ``;`` instead: ``hpsv2:v2.0,checkpoint=F=1;aesthetic:F=0.5;normalize=running``.
    """
    terms, normalize = [], None
    items = spec.split(";") if ";" in spec else spec.split(",")
    if len(items) < 2:
        return None
    for item in items:
        left, eq, right = item.rpartition("=")
        if not eq:
            return None
        if left == "normalize":
            normalize = right
            continue
        try:
            terms.append((left, float(right)))
        except ValueError:
            return None
    if not (len(terms) >= 1 and len(terms) + (normalize is not None) == len(items)):
        return None
    names = [left for left, _ in terms] + ["normalize"] * sum(item.rpartition("=")[0] == "normalize" for item in items)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"reward {spec!r}: {twice[0]} is given twice in the weighted sum; give each term once")
    return terms, normalize


class Augmented:
    """The mean reward over ``views`` random differentiable views of each image."""

    def __init__(self, reward: Callable, kinds: Sequence[str], views: int = 4, seed: int = 0):
        unknown = sorted(set(kinds) - set(AUGMENTATIONS))
        if unknown:
            raise UsageError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
        if views < 1:
            raise UsageError(f"--reward-views must be >= 1, got {views}")
        self.reward, self.kinds, self.views = reward, list(kinds), views
        self.generator = torch.Generator().manual_seed(seed)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if "crop" in self.kinds:  # random resized crop covering 60-100% of each side
            scale = 0.6 + 0.4 * self._rand(n, 1)
            shift = (1 - scale) * (2 * self._rand(n, 2) - 1)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 0]
            theta[:, :, 2] = shift
            grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if "translation" in self.kinds:  # up to 1/8 of the size, zero padded (DiffAugment)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, :, 2] = (2 * self._rand(n, 2) - 1) * 0.25
            grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if "color" in self.kinds:  # brightness, saturation, contrast (DiffAugment)
            x = x + (self._rand(n, 1, 1, 1).to(x) - 0.5) * 0.4
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (self._rand(n, 1, 1, 1).to(x) * 2) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (self._rand(n, 1, 1, 1).to(x) + 0.5) + mean
        if "cutout" in self.kinds:  # one square of half the size set to 0 (mid grey)
            ys = (self._rand(n) * h).long()
            xs = (self._rand(n) * w).long()
            rows = torch.arange(h)[None, :, None]
            cols = torch.arange(w)[None, None, :]
            inside = ((rows - ys[:, None, None]).abs() < h // 4) & ((cols - xs[:, None, None]).abs() < w // 4)
            x = x * (~inside[:, None]).to(x)
        return x.clamp(-1, 1)

    def __call__(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        return torch.stack([self.reward(self.view(images), prompts) for _ in range(self.views)]).mean(0)
