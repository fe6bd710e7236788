"""HunyuanVideo (``HunyuanVideoPipeline``): flow matching, guidance-distilled.

The guidance scale is an input of the network (``guidance``, times 1000, as the pipeline passes
it), so there is no unconditional batch; the pipeline's "true" classifier-free guidance with a
negative prompt (``true_cfg_scale``) is not offered and ``--negative-prompt`` is refused. Prompts
go through the pipeline's own encoder (a Llama model with its prompt template, and CLIP's pooled
embedding); the sigmas are the pipeline's, ``linspace(1, 0, N + 1)[:-1]``, shifted by the
scheduler's ``shift``.

A decode of some frames decodes every frame: the causal VAE's group norms take their statistics
over all the frames of a decoder call, and its temporal tiles (5 latent frames, every 3, blended)
are decoded whole, so no prefix of latent frames decodes to the first frames exactly (on the tiny
test VAE in float64 every prefix's first frames differ from the whole's by more than 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.pipelines.video import VideoModel


class HunyuanVideoDenoiser(nn.Module):
    """``HunyuanVideoTransformer3DModel`` as the pipeline calls it, the guidance as an input."""

    def __init__(self, transformer: nn.Module, guidance: float):
        super().__init__()
        self.transformer, self.guidance = transformer, float(guidance)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        guidance = torch.full((x.shape[0],), self.guidance, dtype=x.dtype, device=x.device) * 1000.0
        return self.transformer(hidden_states=x, timestep=t.expand(x.shape[0]),
                                encoder_hidden_states=cond["encoder_hidden_states"],
                                encoder_attention_mask=cond["encoder_attention_mask"],
                                pooled_projections=cond["pooled_projections"], guidance=guidance,
                                return_dict=False)[0]


class HunyuanVideoModel(VideoModel):
    family: ClassVar[str] = "hunyuanvideo"
    default_guidance: ClassVar[float] = 6.0
    default_frames: ClassVar[int] = 129
    native_size: ClassVar[int] = 720
    max_sequence_length: int = 256

    def __init__(self, pipe: Any, **options: Any):
        if options.get("negative_prompt") is not None:
            raise UsageError("--negative-prompt: HunyuanVideo is guidance-distilled (the scale is a network input, "
                             "no unconditional branch); leave it out")
        self.pipe = pipe
        self.size_multiple = max(1, 16 // self.spatial_factor())  # the pipeline's sizes: multiples of 16
        super().__init__(pipe, **options)

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.network.config.in_channels, self.latent_frames, h, w)

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, pooled, mask = self.pipe.encode_prompt(prompt, device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": pe, "encoder_attention_mask": mask.to(pe.dtype), "pooled_projections": pooled}, {}

    def guided_at(self, scale: float) -> bool:
        return False  # the guidance is an input of the network

    def network_denoiser(self, guidance: float = 6.0) -> nn.Module:
        return HunyuanVideoDenoiser(self.network, guidance)

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        return {"sigmas": np.linspace(1.0, 0.0, steps + 1)[:-1]}
