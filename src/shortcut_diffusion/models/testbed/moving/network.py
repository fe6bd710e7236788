"""The moving-digits denoiser: a small factorized space-time UNet on ``B x C x T x H x W``.

Every block is a residual (2+1)D block: a 3x3 convolution over each frame, the timestep and
condition embedding added per channel, then a convolution over 3 neighbouring frames at each
pixel (the temporal mixing that keeps a digit's motion consistent). Two resolutions (16x16 and
8x8 by default, one more per extra width), skip connections as in a UNet, no attention: at 16x16
over 8 frames the convolutions see the whole digit and its track, and the network runs in a few
milliseconds a video on one CPU thread.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 8


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: N x dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SpaceTimeBlock(nn.Module):
    """``x + temporal(spatial(x) + emb)``, with group norms and SiLU, and a 1x1 skip when widths differ."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(GROUPS, c_in), nn.GroupNorm(GROUPS, c_out)
        self.spatial = nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0))
        self.emb = nn.Linear(emb, c_out)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.spatial(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None, None]
        return self.skip(x) + self.temporal(F.silu(self.norm2(h)))


class SpaceTimeUNet(nn.Module):
    """``(x, t, cond) -> epsilon`` on ``B x 1 x T x H x W``; ``cond`` is an embedding vector per sample."""

    def __init__(self, channels: Sequence[int] = (32, 64), emb: int = 128, in_channels: int = 1):
        super().__init__()
        channels = list(channels)
        self.config = {"channels": channels, "emb": emb, "in_channels": in_channels}
        self.emb_dim = emb
        self.time = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.head = nn.Conv3d(in_channels, channels[0], (1, 3, 3), padding=(0, 1, 1))
        self.down = nn.ModuleList()
        widths = [channels[0]] + channels
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            self.down.append(SpaceTimeBlock(c_in, c_out, emb))
        self.middle = SpaceTimeBlock(channels[-1], channels[-1], emb)
        self.up = nn.ModuleList()
        for c_skip, c_in in zip(reversed(channels), [channels[-1]] + list(reversed(channels))[:-1]):
            self.up.append(SpaceTimeBlock(c_in + c_skip, c_skip, emb))
        self.out_norm = nn.GroupNorm(GROUPS, channels[0])
        self.out = nn.Conv3d(channels[0], in_channels, (1, 3, 3), padding=(0, 1, 1))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        emb = self.time(timestep_embedding(t.to(x.device), self.emb_dim).to(x.dtype)) + cond.to(x.dtype)
        h = self.head(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.avg_pool3d(h, (1, 2, 2))
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
