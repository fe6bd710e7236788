"""Run-directory artefacts: image grids, curves, JSON lines, safetensors.

Every one is written through :mod:`shortcut_diffusion.io.runfiles`: atomically, with the umask's file
mode, and listed in the run's manifest."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from shortcut_diffusion.io.runfiles import append_bytes
from shortcut_diffusion.io.runfiles import write_bytes as atomic_write_bytes

PathLike = Union[str, Path]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON (a bare NaN is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: PathLike, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(json_safe(value), indent=2, default=str, allow_nan=False) + "\n").encode())


def append_jsonl(path: PathLike, row: dict[str, Any]) -> None:
    append_bytes(path, (json.dumps(json_safe(row), allow_nan=False) + "\n").encode())


def save_tensors(path: PathLike, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    payload = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write_bytes(path, payload)


def grid_image(rows: Sequence[torch.Tensor], scale: int = 1, pad: int = 1) -> np.ndarray:
    """Rows of NCHW images in [-1, 1] as one uint8 picture (grey or RGB), padded, upscaled. A row
    of videos (N x T x C x H x W) shows each video's frames in turn."""
    tiles = []
    for row in rows:
        row = row.detach().float().cpu().clamp(-1, 1)
        row = row.flatten(0, 1) if row.dim() == 5 else row
        row = ((row + 1) * 127.5).round().to(torch.uint8)
        if row.shape[1] == 1:
            row = row.expand(-1, 3, -1, -1)
        tiles.append(row[:, :3])
    n, (c, h, w) = max(len(r) for r in tiles), tiles[0].shape[1:]
    canvas = torch.full((c, len(tiles) * (h + pad) + pad, n * (w + pad) + pad), 40, dtype=torch.uint8)
    for i, row in enumerate(tiles):
        for j, image in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, top : top + h, left : left + w] = image
    picture = canvas.permute(1, 2, 0).numpy()
    return picture.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else picture


def save_grid(path: PathLike, rows: Sequence[torch.Tensor], scale: Optional[int] = None) -> Path:
    from PIL import Image

    if scale is None:  # tiny images (the 8x8 digits) are upscaled so they can be seen
        scale = max(1, math.ceil(64 / rows[0].shape[-1]))
    path, buffer = Path(path), io.BytesIO()
    picture = Image.fromarray(grid_image(rows, scale=scale))
    picture.save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_curves(path: PathLike, curves: dict[str, tuple[Iterable[float], Iterable[float]]],
                xlabel: str, ylabel: str, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: PathLike) -> Path:
    """Write a matplotlib figure to ``path`` (atomically; the format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    path, buffer = Path(path), io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
