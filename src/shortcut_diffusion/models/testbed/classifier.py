"""The testbed's digit classifier: a small CNN whose features also serve the metrics.

``features(x)`` gives the 128-d penultimate features (digits-FD, diversity); ``feature_maps(x)``
the convolutional activations (Gram-matrix style loss); ``forward(x)`` the logits. Inputs are
N x 1 x 8 x 8 in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    def __init__(self, width: int = 32, features: int = 128, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.fc = nn.Linear(4 * width * 2 * 2, features)
        self.head = nn.Linear(features, classes)
        self.config = {"width": width, "features": features, "classes": classes}

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = F.silu(self.conv1(x))  # 8x8
        h2 = F.silu(self.conv2(h1))  # 8x8
        h3 = F.silu(self.conv3(F.avg_pool2d(h2, 2)))  # 4x4
        return [h1, h2, h3]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h3 = self.feature_maps(x)[-1]
        return F.silu(self.fc(F.avg_pool2d(h3, 2).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel and mild noise: robustness to generated digits."""
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=generator)
    dy = torch.randint(0, 3, (n,), generator=generator)
    rows = (torch.arange(8).view(1, 8) + dy.view(n, 1)).view(n, 1, 8, 1).expand(n, 1, 8, 10)
    shifted = padded.gather(2, rows)
    cols = (torch.arange(8).view(1, 8) + dx.view(n, 1)).view(n, 1, 1, 8).expand(n, 1, 8, 8)
    shifted = shifted.gather(3, cols)
    noise = torch.randn(shifted.shape, generator=generator) * 0.1
    return (shifted + noise).clamp(-1, 1)
