"""Moving digits: the testbed's real digits sliding across a small canvas.

Each video is one scikit-learn digit (8x8, the digits testbed's split: :func:`..data.load`)
pasted on a dark 16x16 canvas in each of 8 frames, moving one pixel a frame in one of four
directions (``right``, ``left``, ``down``, ``up``). The position across the motion (rows 2..6 for
horizontal motion, columns 2..6 for vertical) and the start along it (0 or 1 pixel in from the
edge) are drawn from a seed, so a set of videos is a pure function of its seed.

Videos are ``N x T x 1 x H x W`` in [-1, 1] (the repository's decoded-video convention, frames on
dim 1); the network's samples are ``N x 1 x T x H x W`` (:func:`to_latent`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.testbed import data

FRAMES = 8
CANVAS = 16
DIGIT = 8
DIRECTIONS = ("right", "left", "down", "up")
STEP = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
"""Each direction's displacement per frame, (rows, columns)."""
ACROSS = (2, 7)
"""The range (low, high exclusive) of the fixed coordinate of a track."""


@dataclass(frozen=True)
class MovingDigits:
    videos: torch.Tensor  # N x T x 1 x H x W in [-1, 1]
    labels: torch.Tensor  # N, the digit's class
    directions: torch.Tensor  # N, index into DIRECTIONS
    corners: torch.Tensor  # N x T x 2, the digit's top-left (row, column) in each frame


def direction_index(name: str) -> int:
    if name not in DIRECTIONS:
        raise UsageError(f"unknown direction {name!r}; choose one of {', '.join(DIRECTIONS)}")
    return DIRECTIONS.index(name)


def tracks(directions: torch.Tensor, across: torch.Tensor, start: torch.Tensor, frames: int = FRAMES) -> torch.Tensor:
    """The digit's top-left corner (row, column) in each frame: N x T x 2 (int64)."""
    step = torch.tensor([STEP[name] for name in DIRECTIONS])[directions]  # N x 2
    span = CANVAS - DIGIT  # the last corner along the motion
    along0 = torch.where(step.sum(1) > 0, start, span - start)  # moving forward starts near 0
    t = torch.arange(frames)
    along = along0[:, None] + step.sum(1)[:, None] * t  # N x T
    moving_rows = step[:, 0] != 0
    rows = torch.where(moving_rows[:, None], along, across[:, None].expand(-1, frames))
    cols = torch.where(moving_rows[:, None], across[:, None].expand(-1, frames), along)
    return torch.stack([rows, cols], dim=2)


def paste(digits: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """``digits`` (N x 1 x 8 x 8) pasted at ``corners`` (N x T x 2) on dark canvases: N x T x 1 x H x W."""
    n, frames = corners.shape[:2]
    canvas = torch.full((n, frames, CANVAS, CANVAS), -1.0)
    offset = torch.arange(DIGIT)
    rows = (corners[..., 0, None] + offset)[..., :, None].expand(n, frames, DIGIT, DIGIT)
    cols = (corners[..., 1, None] + offset)[..., None, :].expand(n, frames, DIGIT, DIGIT)
    index = torch.arange(n)[:, None, None, None].expand_as(rows)
    time = torch.arange(frames)[None, :, None, None].expand_as(rows)
    canvas[index, time, rows, cols] = digits[:, 0, None].expand(n, frames, DIGIT, DIGIT)
    return canvas[:, :, None]


def draw(split: str, count: int, generator: torch.Generator) -> MovingDigits:
    """``count`` random moving digits of ``split`` (digits, directions and tracks from ``generator``)."""
    source = data.load(split)
    pick = torch.randint(0, len(source.labels), (count,), generator=generator)
    return _moving(source.images[pick], source.labels[pick], generator)


def load(split: str = "train", seed: int = 0, count: int = 0) -> MovingDigits:
    """The moving digits of ``split`` from ``seed``: every digit of the split once (``count`` 0) or
    ``count`` random ones."""
    generator = torch.Generator().manual_seed(seed)
    if count:
        return draw(split, count, generator)
    source = data.load(split)
    return _moving(source.images, source.labels, generator)


def _moving(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> MovingDigits:
    """``images`` each given a direction, a position across and a start drawn from ``generator``."""
    n = len(labels)
    directions = torch.randint(0, len(DIRECTIONS), (n,), generator=generator)
    across = torch.randint(*ACROSS, (n,), generator=generator)
    start = torch.randint(0, 2, (n,), generator=generator)
    corners = tracks(directions, across, start)
    return MovingDigits(paste(images, corners), labels, directions, corners)


def to_latent(videos: torch.Tensor) -> torch.Tensor:
    """``B x T x C x H x W`` videos as the network's ``B x C x T x H x W`` samples."""
    return videos.permute(0, 2, 1, 3, 4)


def to_video(latents: torch.Tensor) -> torch.Tensor:
    """The network's ``B x C x T x H x W`` samples as ``B x T x C x H x W`` videos."""
    return latents.permute(0, 2, 1, 3, 4)
