"""Model adapters (diffusers networks -> denoiser callables) and built-in models."""

from .denoisers import ClassifierFreeGuidance, UNet2DConditionDenoiser, UNet2DDenoiser, rescale_noise_cfg
from .toy import ToyModel, toy_model

__all__ = [
    "ClassifierFreeGuidance",
    "ToyModel",
    "UNet2DConditionDenoiser",
    "UNet2DDenoiser",
    "rescale_noise_cfg",
    "toy_model",
]
