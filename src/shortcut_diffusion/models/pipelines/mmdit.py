"""Transformer (MMDiT) pipeline families with flow matching: Stable Diffusion 3 and Flux.

``SD3Model``   ``StableDiffusion3Pipeline`` (three text encoders, CFG, optional dynamic shift)
``FluxModel``  ``FluxPipeline`` (packed latents, guidance as a network input, dynamic shift)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from shortcut_diffusion.models.pipelines.base import PipelineModel
from shortcut_diffusion.models.denoisers import FluxDenoiser, SD3Denoiser


class SD3Model(PipelineModel):
    family: ClassVar[str] = "sd3"
    default_guidance: ClassVar[float] = 7.0
    network_name: ClassVar[str] = "transformer"
    max_sequence_length: int = 256
    lora_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, npe, pooled, npooled = self.pipe.encode_prompt(prompt, None, None, device=self.device,
                                                           negative_prompt=self.negative_prompt,
                                                           do_classifier_free_guidance=True,
                                                           max_sequence_length=self.max_sequence_length)
        return ({"encoder_hidden_states": pe, "pooled_projections": pooled},
                {"encoder_hidden_states": npe, "pooled_projections": npooled})

    def network_denoiser(self, guidance: float = 1.0) -> SD3Denoiser:
        return SD3Denoiser(self.network)

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting", None):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        patch = self.network.config.patch_size
        seq = (self.sample_shape[1] // patch) * (self.sample_shape[2] // patch)
        return {"mu": calculate_shift(seq, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                      config.get("base_shift", 0.5), config.get("max_shift", 1.16))}


class FluxModel(PipelineModel):
    """Flux-dev takes the guidance scale as a network input (no unconditional batch); Flux-schnell
    has no guidance input."""

    family: ClassVar[str] = "flux"
    default_guidance: ClassVar[float] = 3.5
    network_name: ClassVar[str] = "transformer"
    size_multiple: ClassVar[int] = 2
    lora_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    max_sequence_length: int = 512

    def default_size(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        self._img_ids = self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, torch.device("cpu"), torch.float32)
        return ((h // 2) * (w // 2), self.network.config.in_channels)

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, pooled, text_ids = self.pipe.encode_prompt(prompt, None, device=self.device,
                                                       max_sequence_length=self.max_sequence_length)
        self._txt_ids = text_ids
        return {"encoder_hidden_states": pe, "pooled_projections": pooled}, {}

    def guided_at(self, scale: float) -> bool:
        return False  # the guidance is an input of the network

    def network_denoiser(self, guidance: float = 3.5) -> nn.Module:
        if not hasattr(self, "_txt_ids"):
            self.prepare([""])
        return FluxDenoiser(self.network, self._img_ids.to(self.device), self._txt_ids.to(self.device),
                            guidance=guidance)

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        """Flux's sigmas and, with dynamic shifting, the shift ``mu`` of the image's sequence length."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler.config
        kwargs: dict[str, Any] = {"sigmas": np.linspace(1.0, 1 / steps, steps)}
        if config.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_shift(self.sample_shape[0], config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                           config.get("max_shift", 1.15))
        return kwargs

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        return super().vae_latents(unpacked)

    def model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        latents = super().model_latents(latents)
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)
