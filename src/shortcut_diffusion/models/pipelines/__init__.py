"""Diffusers pipelines (SD 1.x/2.x, SDXL, SD3, Flux, pixel-space DDPM; Wan, CogVideoX, LTX-Video,
AnimateDiff, HunyuanVideo video; Wan and CogVideoX image-to-video) as models: one small class per
family, chosen by the pipeline's class."""

from typing import Any

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.pipelines.base import PipelineModel
from shortcut_diffusion.models.pipelines.hunyuan_video import HunyuanVideoModel
from shortcut_diffusion.models.pipelines.image_to_video import (CogVideoXImageToVideoModel, ImageConditioned,
                                                                WanImageToVideoModel)
from shortcut_diffusion.models.pipelines.loading import load_pipeline, looks_like_pipeline
from shortcut_diffusion.models.pipelines.mmdit import FluxModel, SD3Model
from shortcut_diffusion.models.pipelines.pixel import PixelModel
from shortcut_diffusion.models.pipelines.unet import SDModel, SDXLModel
from shortcut_diffusion.models.pipelines.video import AnimateDiffModel, CogVideoXModel, LTXModel, VideoModel, WanModel

FAMILIES = {
    "StableDiffusionPipeline": SDModel,
    "StableDiffusionXLPipeline": SDXLModel,
    "StableDiffusion3Pipeline": SD3Model,
    "FluxPipeline": FluxModel,
    "DDPMPipeline": PixelModel,
    "DDIMPipeline": PixelModel,
    "WanPipeline": WanModel,
    "CogVideoXPipeline": CogVideoXModel,
    "LTXPipeline": LTXModel,
    "AnimateDiffPipeline": AnimateDiffModel,
    "HunyuanVideoPipeline": HunyuanVideoModel,
    "WanImageToVideoPipeline": WanImageToVideoModel,
    "CogVideoXImageToVideoPipeline": CogVideoXImageToVideoModel,
}
"""Pipeline class name -> the model class that adapts it (subclasses of a pipeline match too)."""


def family_of(pipe: Any) -> type:
    """The model class for ``pipe``."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise UsageError(f"{type(pipe).__name__} is not supported; supported pipelines: {', '.join(FAMILIES)}")


def from_pipeline(pipe: Any, **options: Any):
    """A loaded pipeline as its family's model; ``options`` (height, width, guidance_scale,
    guidance_rescale, negative_prompt, max_sequence_length; num_frames for video; image, the fixed
    conditioning image of image-to-video) go to the model class."""
    cls = family_of(pipe)
    if options.get("num_frames") is None:
        options.pop("num_frames", None)
    elif not issubclass(cls, VideoModel):
        raise UsageError(f"--frames applies to video pipelines; {type(pipe).__name__} makes images")
    if issubclass(cls, ImageConditioned):
        return cls(pipe, **options)
    if options.pop("image", None) is not None:
        raise UsageError(f"--image applies to image-to-video pipelines (WanImageToVideoPipeline, "
                         f"CogVideoXImageToVideoPipeline); {type(pipe).__name__} takes no image")
    return cls(pipe, **options)


__all__ = ["FAMILIES", "AnimateDiffModel", "CogVideoXImageToVideoModel", "CogVideoXModel", "HunyuanVideoModel",
           "ImageConditioned", "WanImageToVideoModel", "LTXModel", "VideoModel", "WanModel", "FluxModel", "PipelineModel", "PixelModel", "SD3Model", "SDModel", "SDXLModel", "family_of",
           "from_pipeline", "load_pipeline", "looks_like_pipeline"]
