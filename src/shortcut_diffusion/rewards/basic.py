"""Weight-free rewards that work on any image from any model."""

from __future__ import annotations

from typing import Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.spec import check_images


class Ink:
    """Mean intensity in [-1, 1]: a trivially hackable "aesthetic" proxy.

    >>> Ink()(torch.ones(2, 1, 4, 4)).tolist()
    [1.0, 1.0]
    """

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "Ink":
        if arg:
            raise UsageError(f"reward ink takes no argument, got {arg!r}")
        return cls()

    def __call__(self, images: torch.Tensor, prompts: Optional[list] = None) -> torch.Tensor:
        check_images(images, "ink", any_shape=True)
        return images.flatten(1).mean(dim=1)


class NegMSE:
    """Negative mean squared distance to a fixed target image (random from a seed by default).

    A smooth, nonlinear objective for gradient diagnostics on untrained models.

    >>> r = NegMSE(torch.zeros(1, 1, 2, 2))
    >>> r(torch.ones(3, 1, 2, 2)).tolist()
    [-1.0, -1.0, -1.0]
    """

    def __init__(self, target: torch.Tensor):
        self.target = target

    @classmethod
    def from_spec(cls, arg: str = "", shape: Optional[tuple] = None, **context) -> "NegMSE":
        if shape is None:
            raise UsageError("reward neg-mse needs the image shape")
        try:
            seed = int(arg) if arg else 0
        except ValueError:
            raise UsageError(f"reward neg-mse takes a seed, got {arg!r}") from None
        target = torch.rand((1, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        return cls(target)

    def __call__(self, images: torch.Tensor, prompts: Optional[list] = None) -> torch.Tensor:
        check_images(images, "neg-mse", any_shape=True)
        target = self.target.to(images.device, images.dtype)
        return -(images - target).square().flatten(1).mean(dim=1)
