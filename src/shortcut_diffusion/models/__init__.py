"""Model adapters (diffusers networks -> denoiser callables) and built-in models."""

from __future__ import annotations

from ..errors import UsageError
from .denoisers import ClassifierFreeGuidance, UNet2DConditionDenoiser, UNet2DDenoiser, rescale_noise_cfg
from .toy import ToyModel, toy_model

MODELS = {"toy": toy_model}

__all__ = [
    "MODELS",
    "ClassifierFreeGuidance",
    "ToyModel",
    "UNet2DConditionDenoiser",
    "UNet2DDenoiser",
    "load_model",
    "rescale_noise_cfg",
    "toy_model",
]


def load_model(name: str):
    """A built-in model by name."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]()
