"""Image-to-video families: a fixed conditioning image, encoded once and never optimized.

``WanImageToVideoModel``        ``WanImageToVideoPipeline`` (Wan 2.1 I2V): the image's VAE latents
                                and a first-frame mask concatenated to the channels, and the CLIP
                                image encoder's embedding where the network has an image projection
``CogVideoXImageToVideoModel``  ``CogVideoXImageToVideoPipeline``: the image's latents as the first
                                latent frame (zeros after it), concatenated to the channels

The image (``--image PATH``, or a PIL image through the API) is resized to the video's size by the
pipeline's own video processor and encoded as the pipeline encodes it: Wan takes the VAE
posterior's mode, CogVideoX a draw from it with a generator seeded :attr:`IMAGE_SEED` (the
pipeline's draw with ``generator=torch.Generator().manual_seed(0)``). The result lives on the
network adapter, outside the conditioning that the embedding target trains, so no gradient
method, target or optimizer reaches it. A no-grad sample equals the pipeline's ``__call__``
on the same noise and image (``tests/test_video.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.pipelines.video import CogVideoXDenoiser, CogVideoXModel, WanDenoiser, WanModel

IMAGE_SEED = 0
"""The seed of CogVideoX's draw from the image's VAE posterior (fixed: the image is encoded once)."""


def open_image(image: Any) -> Any:
    """``image`` (a path or a PIL image) as an RGB PIL image; a clear error when it is not one."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(str(image))
    if not path.is_file():
        raise UsageError(f"--image {image}: no such file")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as error:
        raise UsageError(f"--image {image}: not an image file PIL can read ({error})") from None


class ImageConditioned:
    """What the image-to-video families share: the image, and its encoding once per device."""

    pipe: Any
    height: int
    width: int
    device: torch.device

    def set_image(self, pipe: Any, image: Any) -> None:
        self.pipe = pipe
        if image is None:
            raise UsageError(f"{type(self.pipe).__name__} makes a video from an image: give the conditioning image "
                             "with --image PATH")
        self.image = open_image(image)
        self._encoded: dict[str, dict[str, Optional[torch.Tensor]]] = {}

    def image_condition(self) -> dict[str, Optional[torch.Tensor]]:
        """The encoded image (batch 1), computed without a graph the first time on each device."""
        key = str(self.device)
        if key not in self._encoded:
            with torch.no_grad():
                self._encoded = {key: self.encode_image_condition()}
        return self._encoded[key]

    def image_pixels(self) -> torch.Tensor:
        """The image as the pipeline preprocesses it: ``1 x 3 x H x W`` in [-1, 1] at the video's size."""
        pixels = self.pipe.video_processor.preprocess(self.image, height=self.height, width=self.width)
        return pixels.to(self.device, torch.float32)

    def encode_image_condition(self) -> dict[str, Optional[torch.Tensor]]:
        raise NotImplementedError


class WanImageToVideoModel(ImageConditioned, WanModel):
    """Wan 2.1 image-to-video (a Wan 2.2 ``expand_timesteps`` pipeline in image-to-video mode is
    refused: its first latent frame is replaced by the image's at every step)."""

    family: ClassVar[str] = "wan-i2v"

    def __init__(self, pipe: Any, *, image: Any = None, **options: Any):
        if pipe.config.get("expand_timesteps", False):
            raise UsageError("a WanImageToVideoPipeline with expand_timesteps (Wan 2.2 TI2V) is not supported: "
                             "load it as a WanPipeline for text-to-video")
        import diffusers.pipelines.wan.pipeline_wan_i2v as module

        if not hasattr(module, "ftfy"):  # diffusers cleans Wan I2V prompts with it, unguarded
            raise UsageError("WanImageToVideoPipeline needs the ftfy package to encode prompts: pip install ftfy")
        self.set_image(pipe, image)
        super().__init__(pipe, **options)

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.pipe.vae.config.z_dim, self.latent_frames, h, w)

    def encode_image_condition(self) -> dict[str, Optional[torch.Tensor]]:
        vae, temporal = self.pipe.vae, self.temporal_factor()
        pixels = self.image_pixels().unsqueeze(2)
        rest = pixels.new_zeros(1, 3, self.num_frames - 1, self.height, self.width)
        latents = vae.encode(torch.cat([pixels, rest], dim=2).to(vae.dtype)).latent_dist.mode()
        latents = self.model_latents(latents.float())
        h, w = latents.shape[-2:]
        mask = torch.zeros(1, 1, self.num_frames, h, w, device=latents.device)
        mask[:, :, 0] = 1  # the first frame is given; the first latent frame stands for `temporal` frames
        mask = torch.cat([mask[:, :, :1].repeat_interleave(temporal, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(1, -1, temporal, h, w).transpose(1, 2)
        embeds = None
        if self.network.config.image_dim is not None:
            embeds = self.pipe.encode_image(self.image, self.device)
        return {"condition": torch.cat([mask, latents], dim=1), "image_embeds": embeds}

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        image = self.image_condition()
        return WanDenoiser(self.network, False, image["condition"], image["image_embeds"])


class CogVideoXImageToVideoModel(ImageConditioned, CogVideoXModel):
    """CogVideoX image-to-video; it decodes (some frames too) as :class:`CogVideoXModel`."""

    family: ClassVar[str] = "cogvideox-i2v"

    def __init__(self, pipe: Any, *, image: Any = None, **options: Any):
        self.set_image(pipe, image)
        super().__init__(pipe, **options)

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.latent_frames, self.network.config.in_channels // 2, h, w)

    def encode_image_condition(self) -> dict[str, Optional[torch.Tensor]]:
        vae = self.pipe.vae
        generator = torch.Generator(self.device).manual_seed(IMAGE_SEED)
        posterior = vae.encode(self.image_pixels().unsqueeze(2).to(vae.dtype)).latent_dist
        latents = posterior.sample(generator).float().permute(0, 2, 1, 3, 4)  # 1 x 1 x C x h x w
        scale = vae.config.scaling_factor
        latents = latents / scale if vae.config.invert_scale_latents else latents * scale
        rest = latents.new_zeros(1, self.latent_frames - 1, *latents.shape[2:])
        ofs = None
        if self.network.config.ofs_embed_dim is not None:
            ofs = torch.full((1,), 2.0, device=self.device)
        return {"condition": torch.cat([latents, rest], dim=1), "ofs": ofs}

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        image = self.image_condition()
        return CogVideoXDenoiser(self.network, self.rotary_embeddings(), image["condition"], image["ofs"])
