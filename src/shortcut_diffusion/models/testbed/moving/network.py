"""The moving-digits denoiser: a 2D UNet over space with the frames stacked as channels.

A diffusers ``UNet2DModel`` (as the digits testbed's: a ResNet block per resolution, down-sampling
16 -> 8 -> 4, self-attention at the low resolutions) whose input and output channels are the
video's ``C x T`` frames, so every convolution mixes all 8 frames at once (a digit's motion is a
one-pixel shift between neighbouring channels) and the attention sees the whole canvas (a
coherent digit on a dark background). The model class still sees ``B x C x T x H x W`` latents:
this module folds the frames into channels and back. The timestep embedding plus the condition
vector (``class_embed_type="identity"``) is added in every ResNet block.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import UNet2DModel
from torch import nn

from shortcut_diffusion.models.testbed.config import NORM_GROUPS


class FrameStackUNet(nn.Module):
    """``(x, t, cond) -> epsilon`` on ``B x C x T x H x W``; ``cond`` is an embedding vector per sample
    (``emb_dim`` wide: four times the first block's width, the UNet's time-embedding width)."""

    def __init__(self, channels: Sequence[int] = (64, 96, 128), frames: int = 8, in_channels: int = 1,
                 size: int = 16, layers_per_block: int = 1):
        super().__init__()
        channels = [int(c) for c in channels]
        self.config = {"channels": channels, "frames": frames, "in_channels": in_channels, "size": size,
                       "layers_per_block": layers_per_block}
        self.emb_dim = 4 * channels[0]
        depth = len(channels)
        self.unet = UNet2DModel(
            sample_size=size, in_channels=in_channels * frames, out_channels=in_channels * frames,
            block_out_channels=tuple(channels), layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (depth - 1),
            up_block_types=("AttnUpBlock2D",) * (depth - 1) + ("UpBlock2D",),
            norm_num_groups=NORM_GROUPS, class_embed_type="identity")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, c, frames, h, w = x.shape
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(-1)
        out = self.unet(x.reshape(b, c * frames, h, w), t.to(x.device), class_labels=cond.to(x.dtype)).sample
        return out.reshape(b, c, frames, h, w)
