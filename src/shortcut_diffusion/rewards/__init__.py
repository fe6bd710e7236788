"""Rewards: differentiable callables ``reward(images, prompts=None) -> tensor[batch]``.

Higher is better. ``images`` are NCHW in [-1, 1]. ``get_reward("name[:arg]")`` builds one by name.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import UsageError
from .basic import Ink, NegMSE
from .digits import Adversarial, DigitClass, DigitMatch, Style

Reward = Callable[[torch.Tensor, Optional[list]], torch.Tensor]

REWARDS: dict[str, Callable[..., Reward]] = {
    "ink": Ink,
    "neg-mse": NegMSE,
    "digit-class": DigitClass,
    "digit-match": DigitMatch,
    "adversarial": Adversarial,
    "style": Style,
}

__all__ = ["REWARDS", "Adversarial", "DigitClass", "DigitMatch", "Ink", "NegMSE", "Reward", "Style", "get_reward", "resolve_reward_spec"]


def resolve_reward_spec(spec: str, model: object) -> str:
    """``auto`` is ``digit-match`` on a model with the testbed's classifier, ``neg-mse`` otherwise."""
    if spec != "auto":
        return spec
    return "digit-match" if hasattr(model, "classifier") else "neg-mse"


def get_reward(spec: "str | Reward", **context) -> Reward:
    """A reward from ``name`` or ``name:arg``.

    ``context`` goes to the builders that use it: ``shape`` (the image shape), ``model`` (the
    loaded model; the testbed rewards take its classifier).
    """
    if callable(spec) and not isinstance(spec, str):
        return spec
    name, _, arg = str(spec).partition(":")
    if name not in REWARDS:
        raise UsageError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    return REWARDS[name].from_spec(arg, **context)
