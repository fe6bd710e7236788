"""The model interface (:mod:`.base`), the network adapters (:mod:`.denoisers`) and the models
built in code (:mod:`.toy`, :mod:`.sd15`). Loading by name or path is
:func:`shortcut_diffusion.load_model`, one layer up."""

from __future__ import annotations

from shortcut_diffusion.lazy import exports

# Imported on first use, so that the torch-free configs below (models.testbed.config) stay light.
__getattr__ = exports(__name__, {
    **dict.fromkeys(["CastDenoiser", "DiffusionModel", "TableConditioned"], ".base"),
    **dict.fromkeys(["ClassifierFreeGuidance", "FluxDenoiser", "SD3Denoiser", "UNet2DConditionDenoiser", "UNet2DDenoiser",
                     "rescale_noise_cfg"], ".denoisers"),
    "ToyModel": ".toy", "toy_model": ".toy",
})

__all__ = [
    "CastDenoiser",
    "ClassifierFreeGuidance",
    "DiffusionModel",
    "FluxDenoiser",
    "SD3Denoiser",
    "TableConditioned",
    "ToyModel",
    "UNet2DConditionDenoiser",
    "UNet2DDenoiser",
    "rescale_noise_cfg",
    "toy_model",
]
