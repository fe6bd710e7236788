"""The model interface (:mod:`.base`), the network adapters (:mod:`.denoisers`) and the models
built in code (:mod:`.toy`, :mod:`.sd15`). Loading by name or path is
:func:`shortcut_diffusion.load_model`, one layer up."""

from __future__ import annotations

from shortcut_diffusion.models.base import CastDenoiser, DiffusionModel, TableConditioned
from shortcut_diffusion.models.denoisers import (ClassifierFreeGuidance, UNet2DConditionDenoiser, UNet2DDenoiser,
                                                 rescale_noise_cfg)
from shortcut_diffusion.models.toy import ToyModel, toy_model

__all__ = [
    "CastDenoiser",
    "ClassifierFreeGuidance",
    "DiffusionModel",
    "TableConditioned",
    "ToyModel",
    "UNet2DConditionDenoiser",
    "UNet2DDenoiser",
    "rescale_noise_cfg",
    "toy_model",
]
