"""Text-to-video pipeline families: one small class each, chosen by the pipeline's class.

``WanModel``          ``WanPipeline`` (Wan 2.1, Wan 2.2 TI2V; flow matching, UMT5 prompts)
``CogVideoXModel``    ``CogVideoXPipeline`` (v-prediction DDIM, latents frame-major)
``LTXModel``          ``LTXPipeline`` (flow matching on packed tokens, shifted sigmas)
``AnimateDiffModel``  ``AnimateDiffPipeline`` (an SD UNet with a motion adapter, per-frame VAE)

The convention, for every family:

- ``sample_shape`` is one latent as the family's network takes it: ``C x T x h x w`` (Wan,
  AnimateDiff), ``T x C x h x w`` (CogVideoX) or ``tokens x channels`` (LTX, packed);
- :meth:`VideoModel.decode` returns the video as ``B x T x C x H x W`` float32 in [-1, 1] (frames
  on dim 1), and ``image_shape`` is ``T x C x H x W``: what video rewards score (image rewards
  score frames chosen by ``--reward-frames``, see :mod:`shortcut_diffusion.rewards.video`).

As for images, a no-grad sample equals the pipeline's own ``__call__`` on the same noise
(``tests/test_video.py``). Not supported, refused on load with the reason: Wan 2.2's two-expert
pipelines (``transformer_2``), CogVideoX's DPM scheduler (its step takes the previous step's
prediction). HunyuanVideo is in :mod:`.hunyuan_video`, the image-to-video families (Wan I2V,
CogVideoX I2V) in :mod:`.image_to_video`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.pipelines.base import PipelineModel
from shortcut_diffusion.models.pipelines.unet import SDModel


class VideoModel(PipelineModel):
    """What video families share: a number of frames, the temporal compression of the VAE and
    decoding to ``B x T x C x H x W``."""

    default_frames: ClassVar[int] = 16
    native_size: ClassVar[int] = 480
    """The pipeline's default height (the square the size limits are measured against)."""
    network_name: ClassVar[str] = "transformer"
    lora_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, pipe: Any, *, num_frames: Optional[int] = None, **options: Any):
        self.pipe = pipe
        self.num_frames = int(num_frames or self.default_frames)
        temporal = self.temporal_factor()
        if self.num_frames < 1 or (self.num_frames - 1) % temporal:
            raise UsageError(f"--frames {self.num_frames}: this model's VAE compresses {temporal} frames into one after "
                             f"the first; give 1 + {temporal} * k frames (e.g. {1 + temporal * 4})")
        self.latent_frames = (self.num_frames - 1) // temporal + 1
        super().__init__(pipe, **options)

    def spatial_factor(self) -> int:
        return self.pipe.vae_scale_factor_spatial

    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (the VAE's temporal compression)."""
        return self.pipe.vae_scale_factor_temporal

    def default_size(self) -> int:
        return self.native_size

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.num_frames, 3, self.height, self.width)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The video, ``B x T x C x H x W`` float32 (the VAE decodes ``B x C x T x H x W``)."""
        vae = self.pipe.vae
        video = vae.decode(self.vae_latents(latents).to(vae.dtype), return_dict=False)[0]
        return video.float().permute(0, 2, 1, 3, 4)

    frame_decode: ClassVar[str] = "all"
    """What a decode of some frames needs: ``all`` the latent frames, a ``causal`` prefix (a causal
    VAE: the first latent frames decode to the first frames exactly, see :meth:`causal_prefix` and
    :meth:`latent_prefix`) or ``per-frame`` (an image VAE: each frame alone, latents ``C x T x h x w``)."""
    decode_chunk: int = 0
    """Frames decoded at a time, each chunk checkpointed (``--decode-chunk``; 0: all at once)."""

    def frames_decoded(self, frames: Sequence[int]) -> list[int]:
        """The frames a decode that must make ``frames`` makes (see :attr:`frame_decode`)."""
        frames = sorted({int(f) for f in frames})
        if not frames or frames[0] < 0 or frames[-1] >= self.num_frames:
            raise UsageError(f"frames {frames} are not frames of a {self.num_frames}-frame video")
        if self.frame_decode == "per-frame":
            return frames
        if self.frame_decode == "causal":
            return list(range(1 + self.temporal_factor() * (self.causal_prefix(frames[-1]) - 1)))
        return list(range(self.num_frames))

    def causal_prefix(self, last: int) -> int:
        """The number of first latent frames a causal decode of frames ``0..last`` reads: those that
        reach frame ``last`` (a family whose VAE decodes only some prefixes exactly rounds up)."""
        return 1 + -(-last // self.temporal_factor())

    def latent_prefix(self, latents: torch.Tensor, count: int) -> torch.Tensor:
        """The first ``count`` latent frames of ``latents`` (``B x C x T x h x w`` here)."""
        return latents[:, :, :count]

    def decode_frames(self, latents: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """:meth:`images` of the frames ``frames`` (and those the VAE makes with them, see
        :meth:`frames_decoded`); every other frame is zeros, never decoded."""
        made = self.frames_decoded(frames)
        if len(made) == self.num_frames:
            return self.images(latents)
        if self.frame_decode == "causal":
            decoded = self.decode(self.latent_prefix(latents, 1 + made[-1] // self.temporal_factor()))
        else:
            decoded = self.decode(latents.index_select(2, torch.tensor(made, device=latents.device)))
        decoded = decoded.float().clamp(-1, 1)
        video = decoded.new_zeros((len(latents), *self.image_shape))
        return video.index_copy(1, torch.tensor(made, device=video.device), decoded)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Videos ``B x T x C x H x W`` in [-1, 1] to the latents :meth:`decode` maps back to them."""
        vae = self.pipe.vae
        posterior = vae.encode(images.permute(0, 2, 1, 3, 4).to(vae.dtype)).latent_dist
        return self.model_latents(posterior.mean).float()

    def memory_options(self, *, attention_slicing: bool = False, decode_chunk: Optional[int] = None,
                       **options: bool) -> "VideoModel":
        if attention_slicing:
            raise UsageError("--attention-slicing: video pipelines have no attention slicing; use --vae-slicing "
                             "or --vae-checkpointing")
        if decode_chunk:
            if self.frame_decode != "per-frame":
                raise UsageError(f"--decode-chunk: {self.family}'s VAE decodes the frames together (a temporal VAE); "
                                 "use --vae-checkpointing or --vae-tiling")
            self.decode_chunk = int(decode_chunk)
        return super().memory_options(**options)


def _channel_stats(values: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values).view(1, -1, 1, 1, 1).to(like)


def _batched(value: Optional[torch.Tensor], batch: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """A fixed image conditioning of one sample, expanded to ``batch`` rows in ``like``'s dtype."""
    return None if value is None else value.expand(batch, *value.shape[1:]).to(like.dtype)


class WanDenoiser(nn.Module):
    """``WanTransformer3DModel`` as the pipeline calls it; Wan 2.2 TI2V (``expand_timesteps``)
    takes one timestep per latent token (all equal in text-to-video). Image-to-video: the fixed
    ``condition`` (mask and image latents) is concatenated to the channels, and ``image_embeds``
    (the CLIP image encoder's, where the network has an image projection) go in as they are."""

    def __init__(self, transformer: nn.Module, expand: bool, condition: Optional[torch.Tensor] = None,
                 image_embeds: Optional[torch.Tensor] = None):
        super().__init__()
        self.transformer, self.expand = transformer, expand
        self.condition, self.image_embeds = condition, image_embeds

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        timestep = t.expand(x.shape[0])
        if self.expand:
            tokens = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
            timestep = t.float() * torch.ones(x.shape[0], tokens, device=x.device)
        image = {}
        if self.image_embeds is not None:
            image["encoder_hidden_states_image"] = _batched(self.image_embeds, x.shape[0], x)
        if self.condition is not None:
            x = torch.cat([x, _batched(self.condition, x.shape[0], x)], dim=1)
        return self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                                return_dict=False, **image)[0]


class WanModel(VideoModel):
    family: ClassVar[str] = "wan"
    frame_decode: ClassVar[str] = "causal"
    default_guidance: ClassVar[float] = 5.0
    default_frames: ClassVar[int] = 81
    size_multiple: ClassVar[int] = 2
    max_sequence_length: int = 512

    def __init__(self, pipe: Any, **options: Any):
        if getattr(pipe, "transformer_2", None) is not None:
            raise UsageError("Wan 2.2's two-expert pipelines (transformer_2, switched at boundary_ratio) are not "
                             "supported: load a single-transformer Wan (2.1, or 2.2 TI2V-5B)")
        super().__init__(pipe, **options)

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.network.config.in_channels, self.latent_frames, h, w)

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, npe = self.pipe.encode_prompt(prompt, self.negative_prompt, True, 1,
                                          max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": pe}, {"encoder_hidden_states": npe}

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return WanDenoiser(self.network, bool(self.pipe.config.get("expand_timesteps", False)))

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        return latents * _channel_stats(config.latents_std, latents) + _channel_stats(config.latents_mean, latents)

    def model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        return (latents - _channel_stats(config.latents_mean, latents)) / _channel_stats(config.latents_std, latents)


class CogVideoXDenoiser(nn.Module):
    """``CogVideoXTransformer3DModel`` on ``B x T x C x h x w`` latents with its rotary embeddings;
    image-to-video: the fixed image latents ``condition`` concatenated to the channels, and the
    CogVideoX 1.5 ``ofs`` embedding input."""

    def __init__(self, transformer: nn.Module, rotary: Optional[tuple[torch.Tensor, torch.Tensor]],
                 condition: Optional[torch.Tensor] = None, ofs: Optional[torch.Tensor] = None):
        super().__init__()
        self.transformer, self.rotary, self.condition, self.ofs = transformer, rotary, condition, ofs

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        extra = {} if self.ofs is None else {"ofs": self.ofs.to(x.dtype)}
        if self.condition is not None:
            x = torch.cat([x, _batched(self.condition, x.shape[0], x)], dim=2)
        return self.transformer(hidden_states=x, encoder_hidden_states=cond["encoder_hidden_states"],
                                timestep=t.expand(x.shape[0]), image_rotary_emb=self.rotary, return_dict=False,
                                **extra)[0]


class CogVideoXModel(VideoModel):
    """CogVideoX (v-prediction, ``CogVideoXDDIMScheduler``); the pipeline's ``use_dynamic_cfg``
    (a guidance scale that changes with the step) is not offered: guidance is constant.

    Its VAE decodes the latent frames in batches of ``num_latent_frames_batch_size`` (2), the odd
    one out in the first batch, each batch's group norms over its own frames and only the causal
    convolutions' cache passed on: a prefix of latent frames cut at a batch boundary of the whole
    (an odd number, at least 3) decodes to the whole's first frames exactly, any other does not
    (:meth:`causal_prefix` rounds up to one)."""

    family: ClassVar[str] = "cogvideox"
    frame_decode: ClassVar[str] = "causal"
    default_guidance: ClassVar[float] = 6.0
    default_frames: ClassVar[int] = 49

    def __init__(self, pipe: Any, **options: Any):
        if type(pipe.scheduler).__name__ == "CogVideoXDPMScheduler":
            raise UsageError("CogVideoXDPMScheduler is not supported (its step takes the previous step's prediction); "
                             "use --scheduler ddim, or save the pipeline with CogVideoXDDIMScheduler")
        super().__init__(pipe, **options)
        patch_t = self.network.config.patch_size_t
        if patch_t and self.latent_frames % patch_t:
            raise UsageError(f"--frames {self.num_frames}: CogVideoX 1.5 needs latent frames in multiples of {patch_t}")
        if self.latent_frames % 2 == 0:  # its decoder doubles every frame of an even count, the first too
            raise UsageError(f"--frames {self.num_frames}: CogVideoX decodes {self.num_frames} frames only from an odd "
                             f"number of latent frames; give 1 + 8 * k frames (e.g. 9, 49)")
        self.size_multiple = self.network.config.patch_size
        self.max_sequence_length = self.network.config.max_text_seq_length

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.latent_frames, self.network.config.in_channels, h, w)

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, npe = self.pipe.encode_prompt(prompt, self.negative_prompt, True, 1,
                                          max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": pe}, {"encoder_hidden_states": npe}

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return CogVideoXDenoiser(self.network, self.rotary_embeddings())

    def rotary_embeddings(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        if not self.network.config.use_rotary_positional_embeddings:
            return None
        return self.pipe._prepare_rotary_positional_embeddings(self.height, self.width, self.latent_frames, self.device)

    def causal_prefix(self, last: int) -> int:
        """Rounded up to where the VAE's frame batches of the whole video end (see the class)."""
        batch = self.pipe.vae.num_latent_frames_batch_size
        count = max(super().causal_prefix(last), batch)
        return min(self.latent_frames, count + (self.latent_frames - count) % batch)

    def latent_prefix(self, latents: torch.Tensor, count: int) -> torch.Tensor:
        return latents[:, :count]  # frame-major

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.permute(0, 2, 1, 3, 4) / self.pipe.vae.config.scaling_factor

    def model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents * self.pipe.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)


class LTXDenoiser(nn.Module):
    """``LTXVideoTransformer3DModel`` on packed tokens, told the latent grid and the rotary scale."""

    def __init__(self, transformer: nn.Module, grid: tuple[int, int, int], rope_scale: tuple[float, float, float]):
        super().__init__()
        self.transformer, self.grid, self.rope_scale = transformer, grid, rope_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        frames, height, width = self.grid
        return self.transformer(hidden_states=x, encoder_hidden_states=cond["encoder_hidden_states"],
                                timestep=t.expand(x.shape[0]), encoder_attention_mask=cond["encoder_attention_mask"],
                                num_frames=frames, height=height, width=width, rope_interpolation_scale=self.rope_scale,
                                return_dict=False)[0]


class LTXModel(VideoModel):
    """LTX-Video at the pipeline's frame rate (25) and decode timestep (0).

    A decode of some frames decodes a prefix of latent frames where the VAE's decoder is causal
    (``decoder_causal`` in its config, decided per loaded model); the published LTX-Video VAEs' is
    not (its convolutions pad with the last frame and see the next one), so they decode every frame."""

    family: ClassVar[str] = "ltx"
    default_guidance: ClassVar[float] = 3.0
    default_frames: ClassVar[int] = 161
    native_size: ClassVar[int] = 512
    max_sequence_length: int = 128
    frame_rate: ClassVar[int] = 25

    def __init__(self, pipe: Any, **options: Any):
        self.pipe = pipe
        self.size_multiple = max(1, 32 // self.spatial_factor())  # the pipeline's sizes: multiples of 32
        super().__init__(pipe, **options)

    @property
    def frame_decode(self) -> str:  # type: ignore[override]
        return "causal" if self.pipe.vae.config.decoder_causal else "all"

    def causal_prefix(self, last: int) -> int:
        patch_t = self.network.config.patch_size_t  # whole tokens
        return min(self.latent_frames, -(-super().causal_prefix(last) // patch_t) * patch_t)

    def latent_prefix(self, latents: torch.Tensor, count: int) -> torch.Tensor:
        _, h, w = self.grid
        p, patch_t = self.network.config.patch_size, self.network.config.patch_size_t
        return latents[:, : count // patch_t * (h // p) * (w // p)]  # tokens frame-major

    def spatial_factor(self) -> int:
        return self.pipe.vae_spatial_compression_ratio

    def temporal_factor(self) -> int:
        return self.pipe.vae_temporal_compression_ratio

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        config = self.network.config
        p, pt = config.patch_size, config.patch_size_t
        self.grid = (self.latent_frames, h, w)
        return ((self.latent_frames // pt) * (h // p) * (w // p), config.in_channels * p * p * pt)

    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pe, mask, npe, nmask = self.pipe.encode_prompt(prompt, self.negative_prompt, True, 1,
                                                       max_sequence_length=self.max_sequence_length, device=self.device)
        return ({"encoder_hidden_states": pe, "encoder_attention_mask": mask},
                {"encoder_hidden_states": npe, "encoder_attention_mask": nmask})

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        spatial, temporal = self.spatial_factor(), self.temporal_factor()
        return LTXDenoiser(self.network, self.grid, (temporal / self.frame_rate, spatial, spatial))

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        """The pipeline's sigmas, shifted by ``mu`` of the video's sequence length."""
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        config = self.scheduler.config
        frames, h, w = self.grid
        return {"sigmas": np.linspace(1.0, 1 / steps, steps),
                "mu": calculate_shift(frames * h * w, config.get("base_image_seq_len", 256),
                                      config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                      config.get("max_shift", 1.15))}

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        pipe, config = self.pipe, self.network.config
        _, h, w = self.grid
        p, patch_t = config.patch_size, config.patch_size_t
        frames = latents.shape[1] * p * p * patch_t // (h * w)  # fewer than the grid's for a latent prefix
        unpacked = pipe._unpack_latents(latents, frames, h, w, p, patch_t)
        return pipe._denormalize_latents(unpacked, pipe.vae.latents_mean, pipe.vae.latents_std,
                                         pipe.vae.config.scaling_factor)

    def model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        pipe, config = self.pipe, self.network.config
        latents = pipe._normalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                          pipe.vae.config.scaling_factor)
        return pipe._pack_latents(latents, config.patch_size, config.patch_size_t)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = self.vae_latents(latents).to(vae.dtype)
        timestep = None
        if vae.config.timestep_conditioning:  # the pipeline's decode_timestep 0: no decode noise
            timestep = torch.zeros(len(latents), device=latents.device, dtype=latents.dtype)
        return vae.decode(latents, timestep, return_dict=False)[0].float().permute(0, 2, 1, 3, 4)


class AnimateDiffDenoiser(nn.Module):
    """``UNetMotionModel`` as the pipeline calls it: the prompt's embedding repeated for every frame."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        states = cond["encoder_hidden_states"].repeat_interleave(x.shape[2], dim=0)
        return self.unet(x, t, encoder_hidden_states=states).sample


class AnimateDiffModel(VideoModel, SDModel):
    """AnimateDiff: Stable Diffusion's UNet with motion modules (``UNetMotionModel``), its frames
    decoded one by one by the image VAE (no temporal compression)."""

    family: ClassVar[str] = "animatediff"
    frame_decode: ClassVar[str] = "per-frame"
    default_guidance: ClassVar[float] = 7.5
    default_frames: ClassVar[int] = 16
    network_name: ClassVar[str] = "unet"
    lora_modules: ClassVar[tuple[str, ...]] = SDModel.lora_modules

    def spatial_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def temporal_factor(self) -> int:
        return 1

    def default_size(self) -> int:
        return PipelineModel.default_size(self)

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.network.config.in_channels, self.latent_frames, h, w)

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return AnimateDiffDenoiser(self.network)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        b, c, t, h, w = latents.shape
        frames = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).to(vae.dtype)

        def run(chunk: torch.Tensor) -> torch.Tensor:
            return vae.decode(chunk, return_dict=False)[0]

        if self.decode_chunk and self.decode_chunk < len(frames):
            chunked = torch.is_grad_enabled()  # each chunk's graph is recomputed in the backward pass
            images = torch.cat([checkpoint(run, part, use_reentrant=False) if chunked else run(part)
                                for part in frames.split(self.decode_chunk)]).float()
        else:
            images = run(frames).float()
        return images.reshape(b, t, *images.shape[1:])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        b, t = images.shape[:2]
        latents = vae.encode(images.flatten(0, 1).to(vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
        return latents.reshape(b, t, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
