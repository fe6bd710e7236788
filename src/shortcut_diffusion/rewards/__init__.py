"""Rewards: differentiable callables ``reward(images, prompts=None) -> tensor[batch]``.

Higher is better. ``images`` are NCHW in [-1, 1]. ``get_reward("name[:arg]")`` builds one by name.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import UsageError
from .basic import Ink, NegMSE

Reward = Callable[[torch.Tensor, Optional[list]], torch.Tensor]

REWARDS: dict[str, Callable[..., Reward]] = {
    "ink": Ink,
    "neg-mse": NegMSE,
}

__all__ = ["REWARDS", "Ink", "NegMSE", "Reward", "get_reward"]


def get_reward(spec: "str | Reward", **context) -> Reward:
    """A reward from ``name`` or ``name:arg``; ``context`` (e.g. ``shape``) goes to builders that use it."""
    if callable(spec) and not isinstance(spec, str):
        return spec
    name, _, arg = str(spec).partition(":")
    if name not in REWARDS:
        raise UsageError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    return REWARDS[name].from_spec(arg, **context)
