"""A loaded diffusers pipeline as the engine's model: denoiser, scheduler, prompts, decode.

:class:`PipelineModel` gives every target and estimator the same interface as the digits
testbed (``unet``, ``scheduler``, ``sample_shape``, ``cond``, ``guided``, ``decode``,
``encode``), built from the pipeline's own components and helpers so that its no-grad output
equals the pipeline's ``__call__`` on the same noise:

``sd``     ``StableDiffusionPipeline`` (1.x / 2.x, epsilon or v-prediction; CFG, guidance rescale)
``sdxl``   ``StableDiffusionXLPipeline`` (two text encoders, pooled embeddings, added time ids)
``sd3``    ``StableDiffusion3Pipeline`` (MMDiT transformer, flow matching, CFG)
``flux``   ``FluxPipeline`` (packed latents, flow matching with dynamic shift, distilled guidance)
``pixel``  ``DDPMPipeline`` / ``DDIMPipeline`` (an unconditional pixel-space ``UNet2DModel``)

Prompts are encoded once and cached (``cond`` looks them up), so iterations never re-run the
text encoders; :meth:`PipelineModel.offload_text_encoders` then moves them to the CPU.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import UsageError
from ..models.denoisers import ClassifierFreeGuidance, UNet2DConditionDenoiser, UNet2DDenoiser
from .denoisers import CastDenoiser, FluxDenoiser, SD3Denoiser

FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "DDPMPipeline": "pixel",
    "DDIMPipeline": "pixel",
}


def family_of(pipe: Any) -> str:
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise UsageError(f"{type(pipe).__name__} is not supported; supported pipelines: {', '.join(FAMILIES)}")


class PipelineModel:
    """A diffusers pipeline seen by the engine (see the module docstring)."""

    def __init__(self, pipe: Any, *, height: Optional[int] = None, width: Optional[int] = None,
                 guidance_scale: Optional[float] = None, guidance_rescale: float = 0.0,
                 negative_prompt: Optional[str] = None, max_sequence_length: Optional[int] = None):
        self.pipe = pipe
        self.family = family_of(pipe)
        defaults = {"sd": 7.5, "sdxl": 5.0, "sd3": 7.0, "flux": 3.5, "pixel": 1.0}
        self.guidance_scale = defaults[self.family] if guidance_scale is None else float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)
        self.negative_prompt = negative_prompt
        # T5 prompt length: the pipelines' own defaults (the padding changes the embeddings).
        self.max_sequence_length = max_sequence_length or {"sd3": 256, "flux": 512}.get(self.family, 256)
        for module in pipe.components.values():  # frozen; a target enables what it trains
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self._uncond: Optional[dict[str, torch.Tensor]] = None
        if self.family == "pixel":
            size = pipe.unet.config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.height, self.width = size
            self.sample_shape = (pipe.unet.config.in_channels, *size)
            self.image_shape = self.sample_shape
            return
        factor = pipe.vae_scale_factor
        default = (pipe.unet.config.sample_size if hasattr(pipe, "unet") else pipe.default_sample_size) * factor
        self.height, self.width = int(height or default), int(width or default)
        multiple = factor * (2 if self.family == "flux" else 1)
        if self.height % multiple or self.width % multiple:
            raise UsageError(f"height and width must be multiples of {multiple} for this model, got {self.height}x{self.width}")
        latent_channels = self.network.config.in_channels
        if self.family == "flux":
            latent_channels //= 4
            h, w = self.height // factor, self.width // factor
            self.sample_shape = ((h // 2) * (w // 2), latent_channels * 4)
            self._img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, torch.device("cpu"), torch.float32)
        else:
            self.sample_shape = (latent_channels, self.height // factor, self.width // factor)
        self.image_shape = (3, self.height, self.width)

    # -- the network and the scheduler ----------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        return self.pipe.transformer if self.family in ("sd3", "flux") else self.pipe.unet

    @property
    def unet(self) -> nn.Module:
        """The denoising network (a UNet or a transformer): what LoRA and full fine-tuning train."""
        return self.network

    @unet.setter
    def unet(self, module: nn.Module) -> None:
        if self.family in ("sd3", "flux"):
            self.pipe.transformer = module
        else:
            self.pipe.unet = module

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        """Extra ``set_timesteps`` arguments the pipeline passes (Flux's sigmas, dynamic shift ``mu``)."""
        config = self.scheduler.config
        if self.family == "flux":
            import numpy as np

            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            mu = calculate_shift(self.sample_shape[0], config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15))
            sigmas = np.linspace(1.0, 1 / steps, steps)
            kwargs: dict[str, Any] = {"sigmas": sigmas}
            if config.get("use_dynamic_shifting", False):
                kwargs["mu"] = mu
            return kwargs
        if self.family == "sd3" and config.get("use_dynamic_shifting", None):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            patch = self.network.config.patch_size
            seq = (self.sample_shape[1] // patch) * (self.sample_shape[2] // patch)
            return {"mu": calculate_shift(seq, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                          config.get("base_shift", 0.5), config.get("max_shift", 1.16))}
        return {}

    # -- prompts ----------------------------------------------------------------------------------
    def _encode(self, prompt: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(conditional, unconditional) conditioning of one prompt, batch 1, as the pipeline builds it."""
        pipe, device, neg = self.pipe, self.device, self.negative_prompt
        with torch.no_grad():
            if self.family == "sd":
                pe, npe = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=neg)
                return {"encoder_hidden_states": pe}, {"encoder_hidden_states": npe}
            if self.family == "sdxl":
                pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                              do_classifier_free_guidance=True, negative_prompt=neg)
                projection = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                              else int(pooled.shape[-1]))
                size = (self.height, self.width)
                ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype, text_encoder_projection_dim=projection).to(device)
                return ({"encoder_hidden_states": pe, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}},
                        {"encoder_hidden_states": npe, "added_cond_kwargs": {"text_embeds": npooled, "time_ids": ids}})
            if self.family == "sd3":
                pe, npe, pooled, npooled = pipe.encode_prompt(prompt, None, None, device=device, negative_prompt=neg,
                                                              do_classifier_free_guidance=True,
                                                              max_sequence_length=self.max_sequence_length)
                return ({"encoder_hidden_states": pe, "pooled_projections": pooled},
                        {"encoder_hidden_states": npe, "pooled_projections": npooled})
            if self.family == "flux":
                pe, pooled, text_ids = pipe.encode_prompt(prompt, None, device=device,
                                                          max_sequence_length=self.max_sequence_length)
                self._txt_ids = text_ids
                return {"encoder_hidden_states": pe, "pooled_projections": pooled}, {}
        raise UsageError(f"{self.family} models take no prompt")

    def encode_prompts(self, prompts: Sequence[str]) -> None:
        """Encode and cache every prompt not seen yet (each prompt once per model)."""
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._cache:
                self._cache[prompt], uncond = self._encode(prompt)
                self._uncond = self._uncond or uncond

    def cond(self, prompts: Union[Sequence[str], torch.Tensor, None]) -> Any:
        """The batched conditioning of ``prompts`` (one per sample); ``None`` for pixel models."""
        if self.family == "pixel":
            return None
        if isinstance(prompts, str) or isinstance(prompts, torch.Tensor):
            raise UsageError("prompts must be a list of strings, one per sample")
        self.encode_prompts(prompts)
        return _stack([self._cache[p] for p in prompts], self.dtype)

    @property
    def uncond(self) -> Any:
        if self._uncond is None:
            self.encode_prompts([""])
        return self._uncond

    def offload_text_encoders(self) -> None:
        """Move the text encoders to the CPU once the prompts are encoded (they are not needed again)."""
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to("cpu")

    # -- denoisers --------------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        if self.family == "pixel":
            denoiser: nn.Module = UNet2DDenoiser(self.network)
        elif self.family == "sd3":
            denoiser = SD3Denoiser(self.network)
        elif self.family == "flux":
            if not hasattr(self, "_txt_ids"):
                self.encode_prompts([""])
            denoiser = FluxDenoiser(self.network, self._img_ids.to(self.device), self._txt_ids.to(self.device),
                                    guidance=self.guidance_scale)
        else:
            denoiser = UNet2DConditionDenoiser(self.network)
        return denoiser if self.dtype == torch.float32 else CastDenoiser(denoiser, self.dtype)

    def guided(self, scale: Optional[float] = None) -> nn.Module:
        """The denoiser with the pipeline's guidance: CFG on [uncond, cond] (Flux: the guidance input)."""
        scale = self.guidance_scale if scale is None else float(scale)
        if self.family == "flux":
            denoiser = self.denoiser
            inner = denoiser.denoiser if isinstance(denoiser, CastDenoiser) else denoiser
            inner.guidance = scale
            return denoiser
        if self.family == "pixel" or scale <= 1.0:
            return self.denoiser
        return ClassifierFreeGuidance(self.denoiser, self.uncond, scale=scale, rescale=self.guidance_rescale)

    # -- images -----------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable decode to images in [-1, 1] (the VAE, as the pipeline decodes)."""
        if self.family == "pixel":
            return latents
        vae = self.pipe.vae
        if self.family == "flux":
            factor = self.pipe.vae_scale_factor
            latents = self.pipe._unpack_latents(latents, self.height, self.width, factor)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if self.family == "sdxl" and mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean).view(shape).to(latents)
            std = torch.tensor(std).view(shape).to(latents)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None and self.family in ("sd3", "flux"):
            latents = latents + vae.config.shift_factor
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the latents ``decode`` inverts (the VAE posterior's mean)."""
        if self.family == "pixel":
            return images
        vae = self.pipe.vae
        latents = vae.encode(images.to(vae.dtype)).latent_dist.mean
        if getattr(vae.config, "shift_factor", None) is not None and self.family in ("sd3", "flux"):
            latents = latents - vae.config.shift_factor
        latents = latents * vae.config.scaling_factor
        if self.family == "flux":
            b, c, h, w = latents.shape
            latents = self.pipe._pack_latents(latents, b, c, h, w)
        return latents

    def to(self, device: Union[str, torch.device]) -> "PipelineModel":
        self.pipe.to(device)
        self._cache = {k: _to(v, device) for k, v in self._cache.items()}
        self._uncond = _to(self._uncond, device) if self._uncond is not None else None
        return self

    def memory_options(self, *, vae_slicing: bool = False, vae_tiling: bool = False, attention_slicing: bool = False,
                       vae_checkpointing: bool = False) -> "PipelineModel":
        """The memory switches users expect (each calls the pipeline's or the VAE's own method)."""
        vae = getattr(self.pipe, "vae", None)
        if vae is not None:
            if vae_slicing:
                vae.enable_slicing()
            if vae_tiling:
                vae.enable_tiling()
            if vae_checkpointing:
                vae.enable_gradient_checkpointing()
        if attention_slicing and hasattr(self.pipe, "enable_attention_slicing"):
            self.pipe.enable_attention_slicing()
        return self


def _stack(items: list[Any], dtype: torch.dtype) -> Any:
    """Batch the per-prompt conditionings (trained fp32 embeddings are cast to the network's dtype)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        out = torch.cat(items)
        return out.to(dtype) if out.is_floating_point() else out
    return {k: _stack([item[k] for item in items], dtype) for k in first}


def _to(value: Any, device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return {k: _to(v, device) for k, v in value.items()}
