"""The motion metric: each video's centre-of-mass track, and how far it strays.

- :func:`track`: the centre of mass (row, column) of every frame, ``B x T x 2``.
- :func:`motion_deviation`: against a start run (the same noise before optimization), the largest
  distance in pixels over the frames between the two videos' displacement tracks (each track
  minus its first point: the motion, whatever the digit; a 1 turned into a 7 moves its centre of
  mass, not its motion).
- :func:`direction_scores`: against the conditioned direction, whether the net displacement
  points that way by at least half the 7 pixels a real digit travels, and the largest distance
  of the displacement track from the ideal one pixel a frame.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from shortcut_diffusion.models.testbed.moving.data import DIRECTIONS, STEP
from shortcut_diffusion.models.testbed.moving.frames import centre_of_mass

TOLERANCE = 1.0
"""The stated tolerance of the demo: a video keeps its motion when its displacement track stays
within one pixel of the start run's in every frame."""


def track(videos: torch.Tensor) -> torch.Tensor:
    """``B x T x 1 x H x W`` videos -> ``B x T x 2`` centres of mass (row, column)."""
    return centre_of_mass(videos.detach().float().cpu())


def displacement(videos: torch.Tensor) -> torch.Tensor:
    points = track(videos)
    return points - points[:, :1]


def motion_deviation(videos: torch.Tensor, start: torch.Tensor, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """How far each video's motion strays from the start run's (see the module docstring)."""
    per_video = (displacement(videos) - displacement(start)).norm(dim=-1).amax(dim=1)
    return {"motion_deviation": float(per_video.mean()), "motion_deviation_max": float(per_video.max()),
            "motion_within_tolerance": float((per_video <= tolerance).float().mean()), "motion_tolerance": tolerance,
            "motion_deviation_per_sample": per_video.tolist()}


def direction_scores(videos: torch.Tensor, labels: Sequence[Any]) -> dict[str, float]:
    """``motion_accuracy`` and ``motion_error`` against each label's direction (plain labels: right)."""
    from shortcut_diffusion.models.testbed.moving.model import direction_of

    moves = displacement(videos)
    t = torch.arange(moves.shape[1], dtype=moves.dtype)
    steps = torch.tensor([STEP[DIRECTIONS[direction_of(label)]] for label in labels], dtype=moves.dtype)
    ideal = steps[:, None, :] * t[None, :, None]
    along = (moves[:, -1] * steps).sum(1)
    across = (moves[:, -1] - steps * along[:, None]).norm(dim=1)
    reach = (moves.shape[1] - 1) / 2
    return {"motion_accuracy": float(((along >= reach) & (across < along)).float().mean()),
            "motion_error": float((moves - ideal).norm(dim=-1).amax(dim=1).mean())}
