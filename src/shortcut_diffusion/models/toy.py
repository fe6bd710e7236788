"""A small randomly initialised class-conditioned UNet, built in code.

The stand-in for diagnostics until a trained model is given: gradient fidelity, evaluation
counts and saved bytes depend on the architecture and the schedule, not on trained weights. It has
the shape of the project's testbed (one-channel 16x16 images, a class-embedding table outside the
UNet fed through ``class_embed_type="identity"``), so every target exists on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn

from shortcut_diffusion.models.base import TableConditioned


@dataclass(eq=False)
class ToyModel(TableConditioned):
    """Class-conditional, pixel space, no unconditional row (guidance does not apply)."""

    family: ClassVar[str] = "toy"
    cpu_threads: ClassVar[Optional[int]] = 1
    has_null_row: ClassVar[bool] = False
    unet: UNet2DModel
    embeddings: nn.Embedding
    scheduler: DDIMScheduler
    sample_shape: tuple[int, int, int] = (1, 16, 16)


def toy_model(seed: int = 0, channels: tuple[int, ...] = (16, 32), num_classes: int = 10) -> ToyModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        class_embed_type="identity",
    )
    embeddings = nn.Embedding(num_classes, channels[0] * 4)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False
    )
    return ToyModel(unet.eval(), embeddings, scheduler)
