"""Reading user images as tensors in [-1, 1] (CHW), with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from shortcut_diffusion.errors import UsageError


def read_image(path: Union[str, Path], channels: int = 1, size: Optional[tuple[int, int]] = None,
               resize: bool = False) -> torch.Tensor:
    """The image at ``path`` as a ``channels`` x H x W tensor in [-1, 1].

    With ``size`` (H, W) and ``resize=False`` an image of another size is an error, not silently
    resized; with ``resize=True`` it is resized (bilinear).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            converted = img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read image {str(path)!r}: {error}") from None
    if channels not in (1, 3):
        raise UsageError(f"images with {channels} channels are not supported (1 or 3)")
    if size is not None and converted.size != (size[1], size[0]):
        if not resize:
            raise UsageError(
                f"image {str(path)!r} is {converted.size[0]}x{converted.size[1]} (WxH); "
                f"the model needs {size[1]}x{size[0]}"
            )
        converted = converted.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(converted, dtype=np.float32)
    tensor = torch.from_numpy(array.copy())
    tensor = tensor[None] if channels == 1 else tensor.permute(2, 0, 1)
    return tensor / 127.5 - 1.0
