"""Which frames of a video a reward reads: what a decode for it must make (the rest of the video
need not be decoded, where the VAE allows it).

>>> from shortcut_diffusion.rewards.video import FrameReward, Temporal
>>> mean = lambda images, prompts: images.flatten(1).mean(1)
>>> frames_read(FrameReward(mean, "stride:4"), 9), frames_read(Temporal(), 9)
([0, 4, 8], None)
"""

from __future__ import annotations

from typing import Any, Optional

from shortcut_diffusion.rewards.combine import WeightedSum
from shortcut_diffusion.rewards.contract import CheckedReward
from shortcut_diffusion.rewards.video import FrameReward, frame_index


def frames_read(reward: Any, count: int, draw: bool = True) -> Optional[list[int]]:
    """The frames ``reward`` reads on its next call on ``count``-frame videos, or None when it
    reads them all or cannot say (a video reward, a relative or augmented reward, a user's
    callable). A ``random:K`` choice is drawn now for that call; with ``draw=False`` nothing is
    drawn and its last ``K`` frames stand for any draw (the most a causal decode needs)."""
    if isinstance(reward, CheckedReward):
        return frames_read(reward.reward, count, draw)
    if isinstance(reward, WeightedSum):
        reads = [frames_read(term, count, draw) for _, term in reward.terms]
        if any(r is None for r in reads):
            return None
        union = sorted({f for r in reads for f in r})
        return union if len(union) < count else None
    if not isinstance(reward, FrameReward) or reward.frames == "all":
        return None
    if reward.frames.startswith("random:"):
        k = int(reward.frames.partition(":")[2])
        index = reward.draw(count) if draw else frame_index("all", count)[max(count - k, 0):]
    else:
        index = frame_index(reward.frames, count)
    frames = index.tolist()
    return frames if len(frames) < count else None
