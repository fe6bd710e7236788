"""Denoiser adapters for the transformer pipelines (SD3, Flux): ``(x, t, cond) -> model output``.

``cond`` is a dict with the batched prompt tensors (``encoder_hidden_states``,
``pooled_projections``) so that the sampler can split or concatenate it by rows; Flux's position
ids are not batched and live on the adapter.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


class SD3Denoiser(nn.Module):
    """``SD3Transformer2DModel`` as the pipeline calls it (timestep broadcast to the batch)."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.transformer(hidden_states=x, timestep=t.expand(x.shape[0]),
                                encoder_hidden_states=cond["encoder_hidden_states"],
                                pooled_projections=cond["pooled_projections"], return_dict=False)[0]


class FluxDenoiser(nn.Module):
    """``FluxTransformer2DModel`` on packed latents, with the distilled guidance embedding.

    Flux-dev takes the guidance scale as an input (``guidance_embeds``) instead of a second,
    unconditional batch; Flux-schnell has no guidance input (``guidance=None``).
    """

    def __init__(self, transformer: nn.Module, img_ids: torch.Tensor, txt_ids: torch.Tensor,
                 guidance: Optional[float] = None):
        super().__init__()
        self.transformer = transformer
        self.img_ids, self.txt_ids, self.guidance = img_ids, txt_ids, guidance

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        batch = x.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), float(self.guidance if self.guidance is not None else 3.5),
                                  device=x.device, dtype=torch.float32)
        return self.transformer(hidden_states=x, timestep=(t.expand(batch) / 1000).to(x.dtype), guidance=guidance,
                                pooled_projections=cond["pooled_projections"],
                                encoder_hidden_states=cond["encoder_hidden_states"],
                                txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]

