"""UNet pipeline families: Stable Diffusion 1.x / 2.x and SDXL.

``SDModel``    ``StableDiffusionPipeline`` (epsilon or v-prediction; CFG, guidance rescale)
``SDXLModel``  ``StableDiffusionXLPipeline`` (two text encoders, pooled embeddings, added time ids)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from shortcut_diffusion.models.denoisers import UNet2DConditionDenoiser
from shortcut_diffusion.models.pipelines.base import PipelineModel


class SDModel(PipelineModel):
    family: ClassVar[str] = "sd"
    default_guidance: ClassVar[float] = 7.5

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, npe = self.pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt=self.negative_prompt)
        return {"encoder_hidden_states": pe}, {"encoder_hidden_states": npe}

    def network_denoiser(self, guidance: float = 1.0) -> UNet2DConditionDenoiser:
        return UNet2DConditionDenoiser(self.network)


class SDXLModel(SDModel):
    family: ClassVar[str] = "sdxl"
    default_guidance: ClassVar[float] = 5.0

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pipe = self.pipe
        pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True,
                                                      negative_prompt=self.negative_prompt)
        projection = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                      else int(pooled.shape[-1]))
        size = (self.height, self.width)
        ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype,
                                     text_encoder_projection_dim=projection).to(self.device)
        return ({"encoder_hidden_states": pe, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}},
                {"encoder_hidden_states": npe, "added_cond_kwargs": {"text_embeds": npooled, "time_ids": ids}})

    def _latent_statistics(self, like: torch.Tensor):
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return None
        shape = (1, -1, 1, 1)
        return torch.tensor(mean).view(shape).to(like), torch.tensor(std).view(shape).to(like)

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        stats = self._latent_statistics(latents)
        if stats is None:
            return super().vae_latents(latents)
        mean, std = stats
        return latents * std / self.pipe.vae.config.scaling_factor + mean

    def model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        stats = self._latent_statistics(latents)
        if stats is None:
            return super().model_latents(latents)
        mean, std = stats
        return (latents - mean) * self.pipe.vae.config.scaling_factor / std
