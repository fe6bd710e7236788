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
    "conditioning",
    "denoiser_of",
    "image_shape",
    "model_device",
    "timestep_kwargs",
    "load_model",
    "rescale_noise_cfg",
    "toy_model",
]


def model_device(model):
    """The device a model's network lives on."""
    return next(model.unet.parameters()).device


def image_shape(model):
    """The shape of one decoded image (pixel models: the sample itself)."""
    return getattr(model, "image_shape", model.sample_shape)


def conditioning(model, labels):
    """The batched conditioning of ``labels``: class indices (testbed) or prompts (pipelines)."""
    if labels is not None and len(labels) and isinstance(labels[0], str):
        return model.cond(list(labels))
    import torch

    return model.cond(torch.as_tensor(labels).to(model_device(model)))


def timestep_kwargs(model, steps):
    """Extra ``set_timesteps`` arguments the model's pipeline passes (Flux/SD3 shifts), else ``{}``."""
    hook = getattr(model, "timestep_kwargs", None)
    return hook(steps) if hook is not None else {}


def denoiser_of(model, guidance=None):
    """The model's sampling denoiser: guided at ``guidance`` (default: the model's scale) where it
    has classifier-free guidance, else its plain denoiser."""
    return model.guided(guidance) if hasattr(model, "guided") else model.denoiser


def load_model(name: str, **pipeline_options):
    """A built-in model by name, ``sd15-random[:RESOLUTION]``, a digits testbed saved in the
    directory ``name``, or a diffusers pipeline (a ``save_pretrained`` directory or a hub id;
    ``pipeline_options`` go to :class:`~shortcut_diffusion.pipelines.PipelineModel`)."""
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
    from ..pipelines import load_pipeline_model, looks_like_pipeline

    if looks_like_pipeline(name):
        return load_pipeline_model(name, **{k: v for k, v in pipeline_options.items() if v is not None})
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, sd15-random[:RESOLUTION], "
                     "a saved testbed directory, or a diffusers pipeline (directory or hub id)")
