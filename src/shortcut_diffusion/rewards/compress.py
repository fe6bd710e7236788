"""``compressibility``: a differentiable proxy of the JPEG file size (smaller file, higher reward).

JPEG spends its bits on the quantised 8x8 DCT coefficients of the luma and chroma planes. The
proxy takes the same transform (RGB -> YCbCr, level shift, 8x8 block DCT-II, division by the
standard quantisation tables at a quality factor) and counts ``log2(1 + |q|)`` per coefficient, a
smooth stand-in for the entropy coder's bits. DDPO's compressibility reward is the negative JPEG
size, which is not differentiable; this is the differentiable version its users ask for.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.spec import check_images, parse_options

# ITU T.81 Annex K tables (quality 50).
LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
          47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def quant_table(base: list[int], quality: int) -> torch.Tensor:
    """The libjpeg scaling of a base table to ``quality`` (1..100)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = [min(255, max(1, (q * scale + 50) // 100)) for q in base]
    return torch.tensor(table, dtype=torch.float32).view(8, 8)


def dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.float()


def blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H/8 * W/8, 8, 8), padding the edges by replication as JPEG does."""
    b, h, w = plane.shape
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        plane = torch.nn.functional.pad(plane[:, None], (0, pw, 0, ph), mode="replicate")[:, 0]
    h, w = plane.shape[-2:]
    return plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)


class Compressibility:
    """``compressibility[:quality=Q]``: minus the estimated bits per pixel of a JPEG at quality Q."""

    def __init__(self, quality: int = 75):
        if not 1 <= quality <= 100:
            raise UsageError(f"reward compressibility: quality must be 1..100, got {quality}")
        self.quality = quality
        self.tables = (quant_table(LUMA, quality), quant_table(CHROMA, quality))
        self.dct = dct_matrix()

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "Compressibility":
        options = parse_options("compressibility", arg, ["quality"], positional="quality")
        try:
            quality = int(options.get("quality", 75))
        except ValueError:
            raise UsageError(f"reward compressibility: quality must be an integer 1..100, got {options['quality']!r}") from None
        return cls(quality)

    def bits(self, images: torch.Tensor) -> torch.Tensor:
        """Estimated bits per pixel of each image."""
        check_images(images, "compressibility")
        x = (images.float().clamp(-1, 1) + 1) * 127.5
        if x.shape[1] == 1:
            planes = [(x[:, 0] - 128, self.tables[0])]
        else:
            r, g, b = x[:, 0], x[:, 1], x[:, 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            cb = -0.168736 * r - 0.331264 * g + 0.5 * b
            cr = 0.5 * r - 0.418688 * g - 0.081312 * b
            planes = [(y - 128, self.tables[0]), (cb, self.tables[1]), (cr, self.tables[1])]
        dct = self.dct.to(x.device)
        total = 0
        for plane, table in planes:
            coefficients = dct @ blocks(plane) @ dct.T
            q = coefficients / table.to(x.device)
            total = total + torch.log2(1 + q.abs()).flatten(1).sum(1)
        return total / (images.shape[-1] * images.shape[-2])

    def __call__(self, images: torch.Tensor, prompts: Optional[list] = None) -> torch.Tensor:
        return -self.bits(images)
