"""Videos people look at: an animated GIF per sample (Pillow), an MP4 per sample (PyAV, the
optional extra ``video``: ``pip install shortcut-diffusion[video]``) and frame grids (frames
along columns, samples along rows). Every file goes through :mod:`shortcut_diffusion.io.runfiles`.

Videos are ``B x T x C x H x W`` (or one ``T x C x H x W``) in [-1, 1]. Small videos are
upscaled (nearest) to at least 64 pixels a side so they can be seen. Without PyAV the MP4s are
skipped with one note on stderr per process, never an error.

>>> import torch
>>> frames_uint8(torch.zeros(2, 1, 4, 4)).shape
(2, 64, 64, 3)
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Union

import numpy as np
import torch

from shortcut_diffusion.io.runfiles import write_bytes

PathLike = Union[str, Path]
FPS = 8
"""Frames per second of the written videos (the testbeds' clips are 8 frames)."""
MIN_SIDE = 64
_NOTED: set[str] = set()


def frames_uint8(video: torch.Tensor, min_side: int = MIN_SIDE) -> np.ndarray:
    """One video ``T x C x H x W`` in [-1, 1] as ``T x H' x W' x 3`` uint8, upscaled by a whole
    factor to at least ``min_side`` pixels and padded to even sides (what H.264 takes)."""
    video = video.detach().float().cpu().clamp(-1, 1)
    if video.dim() != 4:
        raise ValueError(f"a video is T x C x H x W, got shape {tuple(video.shape)}")
    pixels = ((video + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels[:, :3]
    scale = max(1, math.ceil(min_side / min(pixels.shape[-2:])))
    array = pixels.permute(0, 2, 3, 1).numpy().repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    return np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else array


def gif_bytes(video: torch.Tensor, fps: int = FPS) -> bytes:
    """An animated GIF of one video, looping."""
    from PIL import Image

    pictures = [Image.fromarray(frame) for frame in frames_uint8(video)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=round(1000 / fps),
                     loop=0, disposal=1)
    return buffer.getvalue()


def mp4_bytes(video: torch.Tensor, fps: int = FPS) -> bytes:
    """An H.264 MP4 of one video (PyAV; ImportError without it)."""
    import av

    frames = frames_uint8(video)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def mp4_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _note(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"sdo: note: {message}", file=sys.stderr)


def save_videos(directory: PathLike, videos: torch.Tensor, prefix: str = "sample", fps: int = FPS) -> list[Path]:
    """``directory/PREFIX_XX.gif`` (and ``.mp4`` where PyAV is installed) for each video of the
    batch ``videos``; returns the paths written."""
    directory, written = Path(directory), []
    mp4 = mp4_available()
    if not mp4:
        _note("MP4 videos are skipped: PyAV is not installed (pip install 'shortcut-diffusion[video]'); "
              "the GIFs are written")
    for i, video in enumerate(videos):
        stem = directory / f"{prefix}_{i:02d}"
        write_bytes(stem.with_suffix(".gif"), gif_bytes(video, fps))
        written.append(stem.with_suffix(".gif"))
        if mp4:
            write_bytes(stem.with_suffix(".mp4"), mp4_bytes(video, fps))
            written.append(stem.with_suffix(".mp4"))
    return written


def frame_rows(before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
    """The rows of a before/after frame grid: each sample's video before, then after (``T``
    frames along each row)."""
    return [video for pair in zip(before.detach().cpu(), after.detach().cpu()) for video in pair]


def side_by_side(videos: torch.Tensor) -> torch.Tensor:
    """A batch ``B x T x C x H x W`` as one video ``T x 3 x H' x W'``: the samples side by side,
    padded, frame after frame."""
    from shortcut_diffusion.io.reporting import grid_image

    frames = [torch.from_numpy(grid_image([videos[:, t]])).permute(2, 0, 1) for t in range(videos.shape[1])]
    return torch.stack(frames).float() / 127.5 - 1


def save_gif(path: PathLike, videos: torch.Tensor, fps: int = FPS) -> Path:
    """One animated GIF of a batch of videos side by side (:func:`side_by_side`), looping."""
    if videos.dim() != 5:
        raise ValueError(f"save_gif takes videos (B x T x C x H x W), got shape {tuple(videos.shape)}")
    write_bytes(path, gif_bytes(side_by_side(videos.detach().cpu()), fps))
    return Path(path)


def save_before_after(directory: PathLike, before: torch.Tensor, after: torch.Tensor, fps: int = FPS) -> list[Path]:
    """A run's samples before and after in ``directory``: ``before_after.png`` (images: a row
    before and a row after; videos: a frame grid, each sample's frames before and after on two
    rows) and, for videos, ``before.gif`` and ``after.gif`` (the batch side by side) and
    ``videos/before_XX.gif`` and ``videos/after_XX.gif`` (and ``.mp4``), one per sample."""
    from shortcut_diffusion.io.reporting import save_grid

    directory = Path(directory)
    if before.dim() != 5:
        return [save_grid(directory / "before_after.png", [before, after])]
    written = [save_grid(directory / "before_after.png", frame_rows(before, after))]
    for name, videos in (("before", before), ("after", after)):
        written.append(save_gif(directory / f"{name}.gif", videos, fps))
        written += save_videos(directory / "videos", videos, prefix=name, fps=fps)
    return written
