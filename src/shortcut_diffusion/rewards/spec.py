"""What every reward shares: the image convention and the option syntax of reward specs."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from shortcut_diffusion.errors import UsageError


def check_images(images: torch.Tensor, name: str, any_shape: bool = False) -> None:
    """Rewards take NCHW images in [-1, 1] (RGB or grey). The weight-free rewards (``any_shape``)
    take any batch of samples in that range: they also score the raw outputs of models without a
    decoder (latents of any channel count, packed token sequences)."""
    if any_shape:
        if images.dim() < 2:
            raise UsageError(f"reward {name} takes a batch of samples (NCHW images), got shape {tuple(images.shape)}")
    elif images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UsageError(f"reward {name} takes NCHW images with 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.detach().abs().max() > 1.01:
        raise UsageError(f"reward {name} takes images in [-1, 1]; got values up to {float(images.detach().abs().max()):.2f} "
                         "(clamp them, or convert from [0, 1] with x * 2 - 1)")


def parse_options(name: str, arg: str, allowed: Sequence[str], positional: Optional[str] = None) -> dict[str, str]:
    """``a=1,b=2`` (and one leading positional value) into a dict, with clear errors."""
    options: dict[str, str] = {}
    for i, item in enumerate(filter(None, arg.split(","))):
        key, sep, value = item.partition("=")
        if not sep and i == 0 and positional:
            options[positional] = item
            continue
        if not sep or key not in allowed:
            raise UsageError(f"reward {name}: unknown option {item!r}; options: {', '.join(allowed)}")
        if key in options:
            raise UsageError(f"reward {name}: option {key} is given twice; give it once")
        options[key] = value
    return options
