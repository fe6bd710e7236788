"""The reward contract, checked where rewards are called: ``reward(images, prompts) -> tensor[batch]``.

On the first call, and again on the first call whose images require grad, :class:`CheckedReward`
verifies that the value is a float tensor with one finite value per image and, when the images
require grad, that it depends differentiably on them. A reward that breaks the contract (a scalar,
a ``[batch, 64]`` matrix, a constant, NaN) would otherwise run to completion and optimize nothing,
or fail deep inside an optimizer with a shape error.

A reward from the user's file (``FILE.py:NAME``) that raises (``SystemExit`` included) is reported as
``reward FILE.py:NAME raised TYPE: message (at FILE.py:LINE in FUNCTION)``, naming the user's own
frames rather than ours.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from shortcut_diffusion.errors import UsageError


def check_value(value: Any, images: torch.Tensor, name: str) -> None:
    batch = len(images)
    if isinstance(images, torch.Tensor) and images.is_floating_point() and not torch.isfinite(images.detach()).all():
        raise UsageError(f"the images reward {name} was given are non-finite (NaN or inf): sampling diverged before "
                         "the reward saw them; lower --guidance (or --scale of sdo guide), or check the model")
    if not isinstance(value, torch.Tensor):
        raise UsageError(f"reward {name} returned {type(value).__name__}; a reward returns a tensor of one value "
                         f"per image (shape [{batch}])")
    if tuple(value.shape) != (batch,):
        raise UsageError(f"reward {name} returned shape {list(value.shape)} for {batch} images; a reward returns one "
                         f"value per image (shape [{batch}]): reduce the other dimensions, e.g. .mean(dim=1)")
    if not value.is_floating_point():
        raise UsageError(f"reward {name} returned {value.dtype} values; rewards are floating point")
    if not torch.isfinite(value.detach()).all():
        raise UsageError(f"reward {name} returned non-finite values ({value.detach().tolist()[:4]}...) for the "
                         "starting images")
    if images.requires_grad and torch.is_grad_enabled() and not value.requires_grad:
        raise UsageError(f"reward {name} does not depend differentiably on the images (its value carries no "
                         "gradient: a constant, a .detach(), .item() or numpy inside?); optimizing it would change nothing")


def check_not_meta(reward: Any) -> None:
    """A reward whose network (the reward itself, or a module it holds) has tensors on the meta
    device has shapes but no weights: it cannot run anywhere."""
    modules = [reward] if isinstance(reward, torch.nn.Module) else [
        m for m in vars(reward).values() if isinstance(m, torch.nn.Module)] if hasattr(reward, "__dict__") else []
    for module in modules:
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            name = getattr(reward, "__name__", None) or type(reward).__name__
            raise UsageError(f"reward {name} has parameters on the meta device (shapes without weights): load its "
                             "weights before using it (e.g. module.to_empty(device=...) then load_state_dict)")


def _user_frames(error: BaseException, file: Optional[Path]) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if file is not None:
        own = [f for f in frames if Path(f.filename).resolve() == file]
        frames = own or frames
    return "; ".join(f"at {Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames[-3:])


class CheckedReward:
    """``reward`` with its contract checked (see the module docstring); otherwise transparent."""

    def __init__(self, reward: Callable, name: str, user_file: Optional[Path] = None):
        self.reward, self.name, self.user_file = reward, name, user_file
        self._checked = self._checked_grad = False

    def __call__(self, images: torch.Tensor, prompts: Any = None) -> torch.Tensor:
        try:
            value = self.reward(images, prompts)
        except UsageError:
            raise
        except (Exception, SystemExit) as error:  # an exit from the user's code is an error, never success
            if self.user_file is None:
                raise
            raise UsageError(f"reward {self.name} raised {type(error).__name__}: {error} "
                             f"({_user_frames(error, self.user_file)})") from error
        grad = images.requires_grad and torch.is_grad_enabled()
        if not self._checked or (grad and not self._checked_grad):
            check_value(value, images, self.name)
            self._checked = True
            self._checked_grad = self._checked_grad or grad
        return value

    _OWN = ("reward", "name", "user_file", "_checked", "_checked_grad")

    def __getattr__(self, name: str) -> Any:  # .to(), .model, running statistics of the wrapped reward
        if name in CheckedReward._OWN:
            raise AttributeError(name)
        return getattr(self.reward, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in CheckedReward._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.reward, name, value)


def checked(reward: Callable) -> CheckedReward:
    """``reward`` with its contract checked (rewards from :func:`get_reward` already are)."""
    if isinstance(reward, CheckedReward):
        return reward
    name = getattr(reward, "__name__", None) or type(reward).__name__
    return CheckedReward(reward, name)
