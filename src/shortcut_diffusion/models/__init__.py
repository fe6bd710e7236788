"""Model adapters (diffusers networks -> denoiser callables) and built-in models."""

from __future__ import annotations

from ..errors import UsageError
from .denoisers import ClassifierFreeGuidance, UNet2DConditionDenoiser, UNet2DDenoiser, rescale_noise_cfg
from .toy import ToyModel, toy_model

def _digits():
    from ..testbed import load_digits_model

    return load_digits_model()


MODELS = {"digits": _digits, "toy": toy_model}

__all__ = [
    "MODELS",
    "ClassifierFreeGuidance",
    "ToyModel",
    "UNet2DConditionDenoiser",
    "UNet2DDenoiser",
    "denoiser_of",
    "load_model",
    "rescale_noise_cfg",
    "toy_model",
]


def denoiser_of(model, guidance=None):
    """The model's sampling denoiser: guided at ``guidance`` (default: the model's scale) where it
    has classifier-free guidance, else its plain denoiser."""
    return model.guided(guidance) if hasattr(model, "guided") else model.denoiser


def load_model(name: str):
    """A built-in model by name, ``sd15-random[:RESOLUTION]``, or a digits testbed saved in the
    directory ``name``."""
    if name in MODELS:
        return MODELS[name]()
    if name == "sd15-random" or name.startswith("sd15-random:"):
        from .sd15 import sd15_shaped

        size = name.partition(":")[2] or "512"
        if not size.isdigit():
            raise UsageError(f"sd15-random:RESOLUTION needs an integer resolution, got {size!r}")
        return sd15_shaped(int(size))
    from pathlib import Path

    if (Path(name) / "testbed.json").is_file():
        from ..testbed import load_digits_model

        return load_digits_model(name)
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, sd15-random[:RESOLUTION] "
                     "or a saved testbed directory")
