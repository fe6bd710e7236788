"""Unconditional pixel-space pipelines: ``DDPMPipeline`` / ``DDIMPipeline`` (a ``UNet2DModel``)."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

from torch import nn

from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.models.denoisers import UNet2DDenoiser


class PixelModel(DiffusionModel):
    family: ClassVar[str] = "pixel"
    condition_kind: ClassVar[str] = "none"

    def __init__(self, pipe: Any, **options: Optional[Any]):
        self.pipe = pipe
        self.guidance_scale = 1.0
        pipe.unet.requires_grad_(False)
        size = pipe.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.height, self.width = size
        self.sample_shape = (pipe.unet.config.in_channels, *size)

    @property
    def network(self) -> nn.Module:
        return self.pipe.unet

    def set_network(self, module: nn.Module) -> None:
        self.pipe.unet = module

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    def conditioning(self, labels: Sequence[Any]) -> None:
        return None

    def network_denoiser(self, guidance: float = 1.0) -> UNet2DDenoiser:
        return UNet2DDenoiser(self.network)
