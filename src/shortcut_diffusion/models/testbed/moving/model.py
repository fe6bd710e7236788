"""The bundled moving-digits video model (``--model moving-digits``): load, save, condition.

A :class:`~.network.FrameStackUNet` on ``B x 1 x 8 x 16 x 16`` (channels x frames x rows x
columns) conditioned on the digit's class and its direction of motion through one embedding
table outside the network (row ``10 * direction + class``, 40 rows, then a null row for
classifier-free guidance), sampled with DDIM. It decodes to the repository's video convention,
``B x T x C x H x W`` in [-1, 1]. The classifier (rewards) and the judge panel (never rewards)
are the bundled digits testbed's, read on each frame cropped to 8x8 around the digit's centre of
mass (:mod:`.frames`). Saved as::

    DIR/network.safetensors   the FrameStackUNet's weights (its config in testbed.json)
    DIR/embeddings.safetensors  the condition table ("weight", 41 x D)
    DIR/scheduler/            DDIMScheduler.save_pretrained
    DIR/testbed.json          guidance scale, network config, training config, metrics
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.reporting import atomic_write_bytes, save_tensors
from shortcut_diffusion.io.runfiles import write_dir
from shortcut_diffusion.models.base import TableConditioned
from shortcut_diffusion.models.testbed.config import BUNDLED_MOVING
from shortcut_diffusion.models.testbed.moving import data
from shortcut_diffusion.models.testbed.moving.network import FrameStackUNet

NUM_CLASSES = 10
NULL_ROW = NUM_CLASSES * len(data.DIRECTIONS)


class MotionLabel(int):
    """A class label that also names a direction of motion: an ``int`` (the class, what rewards and
    judges read) with ``direction`` (an index into :data:`.data.DIRECTIONS`)."""

    direction: int

    def __new__(cls, digit: int, direction: int = 0) -> "MotionLabel":
        label = super().__new__(cls, int(digit))
        label.direction = int(direction)
        return label

    def __repr__(self) -> str:
        return f"{int(self)}:{data.DIRECTIONS[self.direction]}"

    def __reduce__(self):
        return (MotionLabel, (int(self), self.direction))


def direction_of(label: Any) -> int:
    """The direction index of a label (plain class labels move right)."""
    return int(getattr(label, "direction", 0))


class VideoDenoiser(nn.Module):
    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.network(x, t, cond)


@dataclass(eq=False)
class MovingDigitsModel(TableConditioned):
    """The moving-digits testbed as a video :class:`~shortcut_diffusion.models.base.DiffusionModel`."""

    family: ClassVar[str] = "moving-digits"
    cpu_threads: ClassVar[Optional[int]] = 1
    adapter: ClassVar[type] = VideoDenoiser
    unet: FrameStackUNet
    embeddings: nn.Embedding
    scheduler: DDIMScheduler
    classifier: Optional[nn.Module] = None
    guidance_scale: float = 1.5
    info: dict[str, Any] = field(default_factory=dict)
    sample_shape: tuple[int, ...] = (1, data.FRAMES, data.CANVAS, data.CANVAS)
    judge: Optional[nn.Module] = None
    panel: Optional[Any] = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        c, t, h, w = self.sample_shape
        return (t, c, h, w)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return NUM_CLASSES

    def labels_from(self, items: Sequence[str], source: str) -> list:
        """``K`` (class K moving right), ``K:DIRECTION`` (right, left, down, up) or ``all``."""
        labels = []
        for item in [str(item) for item in items] or []:
            digit, _, direction = item.partition(":")
            base = super().labels_from([digit], source)
            index = data.direction_index(direction) if direction else 0
            labels.extend(MotionLabel(k, index) for k in base)
        if not labels:
            raise UsageError(f"{source} gives no conditions")
        return labels

    def conditioning(self, labels: Sequence[Any]) -> torch.Tensor:
        rows = [int(label) + NUM_CLASSES * direction_of(label) for label in labels]
        return self.embeddings(torch.as_tensor(rows, dtype=torch.long, device=self.embeddings.weight.device))

    def unconditional(self) -> torch.Tensor:
        return self.embeddings.weight[NULL_ROW : NULL_ROW + 1].detach()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return data.to_video(latents.float())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return data.to_latent(images)

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "MovingDigitsModel":
        super().to(device, dtype)
        for module in (self.classifier, self.judge):
            if module is not None:
                module.to(device=device, dtype=torch.float32)
        return self

    def metrics(self, images: torch.Tensor, labels: Sequence[Any]) -> dict[str, float]:
        from shortcut_diffusion.models.testbed.moving.frames import video_metrics

        return video_metrics(self, images, labels)

    def save(self, directory: Union[str, Path]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / "network.safetensors", self.unet.state_dict())
        save_tensors(directory / "embeddings.safetensors", {"weight": self.embeddings.weight})
        write_dir(directory / "scheduler", self.scheduler.save_pretrained)
        info = {**self.info, "guidance_scale": self.guidance_scale, "network_config": self.unet.config}
        atomic_write_bytes(directory / "testbed.json", (json.dumps(info, indent=2) + "\n").encode())


def is_moving_testbed(directory: Union[str, Path]) -> bool:
    return (Path(directory) / "network.safetensors").is_file() and (Path(directory) / "testbed.json").is_file()


def load_moving_digits(directory: Union[str, Path, None] = None) -> MovingDigitsModel:
    """The moving-digits model in ``directory`` (default: the bundled one), with the bundled
    digits testbed's classifier, judge and panel reading its frames."""
    from shortcut_diffusion.models.testbed.model import load_digits_model
    from shortcut_diffusion.models.testbed.moving.frames import FrameClassifier, FramePanel

    directory = Path(directory) if directory is not None else BUNDLED_MOVING
    if not is_moving_testbed(directory):
        raise UsageError(f"no moving-digits testbed at {directory} (network.safetensors or testbed.json missing); "
                         "train one with `sdo train-testbed --video --out DIR`")
    try:
        info = json.loads((directory / "testbed.json").read_text())
        network = FrameStackUNet(**{k: v for k, v in info["network_config"].items()})
        network.load_state_dict(load_file(directory / "network.safetensors"))
        weight = load_file(directory / "embeddings.safetensors")["weight"]
        scheduler = DDIMScheduler.from_pretrained(directory / "scheduler")
    except Exception as error:  # truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"the moving-digits testbed in {directory} cannot be loaded ({reason}); train it again "
                         "with `sdo train-testbed --video --out DIR`") from None
    digits = load_digits_model()
    panel = FramePanel(digits.panel) if digits.panel is not None else None
    return MovingDigitsModel(network.eval().requires_grad_(False), nn.Embedding.from_pretrained(weight, freeze=True),
                             scheduler, FrameClassifier(digits.classifier), guidance_scale=float(info["guidance_scale"]),
                             info=info, judge=FrameClassifier(digits.judge) if digits.judge is not None else None,
                             panel=panel)
