"""Animated GIFs of videos (``B x T x C x H x W`` in [-1, 1]) with Pillow."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Union

import torch

from shortcut_diffusion.io.reporting import atomic_write_bytes, grid_image


def save_gif(path: Union[str, Path], videos: torch.Tensor, scale: Optional[int] = None, frame_ms: int = 150) -> Path:
    """One animated GIF of ``videos`` side by side (one row), frame after frame, looping."""
    from PIL import Image

    if videos.dim() != 5:
        raise ValueError(f"save_gif takes videos (B x T x C x H x W), got shape {tuple(videos.shape)}")
    if scale is None:  # small frames are upscaled so they can be seen
        scale = max(1, math.ceil(64 / videos.shape[-1]))
    frames = [Image.fromarray(grid_image([videos[:, t]], scale=scale)) for t in range(videos.shape[1])]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
