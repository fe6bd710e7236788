"""Rewards on videos: ``B x T x C x H x W`` in [-1, 1] (frames on dim 1).

- An image reward scores the frames ``--reward-frames`` chooses (``all``, ``first``, ``middle``,
  ``last``, ``random:K`` (K distinct frames drawn per call, the same for the whole batch) or
  ``stride:S`` (frames 0, S, 2S, ...)); a video's reward is the mean over its chosen frames
  (:class:`FrameReward`). Without ``--reward-frames`` every frame is scored.
- A video reward takes the whole video: a callable (or class) with the attribute
  ``video = True``, such as :class:`Temporal` or a user's ``FILE.py:NAME``. Its value is checked
  like an image reward's: one finite value per video, differentiable in the video.

>>> import torch
>>> video = torch.zeros(2, 3, 1, 4, 4)
>>> video[:, 1] = 0.5
>>> Temporal()(video).tolist()
[-0.25, -0.25]
>>> FrameReward(lambda images, prompts: images.flatten(1).mean(1), "last")(video).tolist()
[0.0, 0.0]
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.choices import check_frames
from shortcut_diffusion.rewards.spec import check_images



def is_video_reward(reward: Any) -> bool:
    """Whether ``reward`` declares that it takes whole videos (``video = True``)."""
    return bool(getattr(reward, "video", False))


def frame_index(spec: str, frames: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The frames ``spec`` chooses out of ``frames``, in order.

    >>> frame_index("stride:2", 5).tolist(), frame_index("middle", 5).tolist()
    ([0, 2, 4], [2])
    """
    check_frames(spec)
    name, _, arg = spec.partition(":")
    if name == "all":
        return torch.arange(frames)
    if name in ("first", "middle", "last"):
        return torch.tensor([{"first": 0, "middle": frames // 2, "last": frames - 1}[name]])
    if name == "stride":
        return torch.arange(0, frames, int(arg))
    if int(arg) > frames:
        raise UsageError(f"--reward-frames {spec}: the videos have only {frames} frames")
    return torch.randperm(frames, generator=generator)[: int(arg)].sort().values


def _repeat_labels(prompts: Any, k: int) -> Any:
    """One label per frame: each sample's label repeated ``k`` times."""
    if prompts is None:
        return None
    if isinstance(prompts, torch.Tensor):
        return prompts.repeat_interleave(k, dim=0)
    return [p for p in prompts for _ in range(k)]


class FrameReward:
    """An image reward on videos: the mean of its values on the frames ``frames`` chooses."""

    video = True

    def __init__(self, reward: Callable, frames: str = "all", seed: int = 0):
        check_frames(frames)
        self.reward, self.frames = reward, frames
        self.generator = torch.Generator().manual_seed(seed)
        self._drawn: Optional[tuple[int, torch.Tensor]] = None

    def draw(self, count: int) -> torch.Tensor:
        """The frames the next call on ``count``-frame videos scores, drawn now (so that only
        they need decoding); that call uses them."""
        self._drawn = (count, frame_index(self.frames, count, self.generator))
        return self._drawn[1]

    def __call__(self, videos: torch.Tensor, prompts: Any = None) -> torch.Tensor:
        if videos.dim() != 5:
            raise UsageError(f"--reward-frames scores videos (B x T x C x H x W), got shape {tuple(videos.shape)}")
        drawn, self._drawn = self._drawn, None
        index = drawn[1] if drawn is not None and drawn[0] == videos.shape[1] else \
            frame_index(self.frames, videos.shape[1], self.generator)
        index = index.to(videos.device)
        chosen = videos.index_select(1, index)
        b, k = chosen.shape[:2]
        values = self.reward(chosen.flatten(0, 1), _repeat_labels(prompts, k))
        return values.reshape(b, k).mean(dim=1)

    def to(self, device: Any) -> "FrameReward":
        moved = self.reward.to(device) if callable(getattr(self.reward, "to", None)) else None
        self.reward = self.reward if moved is None else moved
        return self


class Temporal:
    """Temporal consistency: minus the mean squared difference of neighbouring frames."""

    video = True

    @classmethod
    def from_spec(cls, arg: str = "", shape: Optional[tuple] = None, **context) -> "Temporal":
        if arg:
            raise UsageError(f"reward temporal takes no argument, got {arg!r}")
        if shape is not None and len(shape) != 4:
            raise UsageError("reward temporal scores videos; this model makes images")
        return cls()

    def __call__(self, videos: torch.Tensor, prompts: Any = None) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[1] < 2:
            raise UsageError(f"reward temporal takes videos of 2 or more frames (B x T x C x H x W), got shape "
                             f"{tuple(videos.shape)}")
        check_images(videos.flatten(0, 1), "temporal", any_shape=True)
        return -(videos[:, 1:] - videos[:, :-1]).square().flatten(1).mean(dim=1)
