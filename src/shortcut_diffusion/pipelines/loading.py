"""Loading pipelines the way diffusers does: a ``save_pretrained`` directory or a hub id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def looks_like_pipeline(name: str) -> bool:
    """A local directory (a pipeline, or an error saying why not), or a hub id (``org/name``)."""
    path = Path(name)
    if path.is_dir():
        return True
    return name.count("/") == 1 and not name.startswith((".", "/")) and not path.suffix


def load_pipeline(name: str, dtype: str = "fp32", variant: Optional[str] = None) -> Any:
    """``DiffusionPipeline.from_pretrained(name)`` with the weights in ``dtype``; clear errors.

    ``HF_HUB_OFFLINE=1`` is respected by the hub client: only the local cache is read.
    """
    from diffusers import DiffusionPipeline

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = Path(name)
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise UsageError(f"{name} is a directory but not a saved pipeline (no model_index.json); "
                         "save one with pipe.save_pretrained(DIR)")
    try:
        return DiffusionPipeline.from_pretrained(name, torch_dtype=DTYPES[dtype], variant=variant)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = (" HF_HUB_OFFLINE is set: only models already in the local cache can be loaded." if offline
                else " Check the path or hub id, your network, and that you accepted the model's license on the hub.")
        raise UsageError(f"could not load the pipeline {name!r}: {str(error).splitlines()[0]}.{hint}") from error


def load_pipeline_model(name: str, *, dtype: str = "fp32", height: Optional[int] = None, width: Optional[int] = None,
                        guidance_scale: Optional[float] = None, guidance_rescale: float = 0.0,
                        negative_prompt: Optional[str] = None, variant: Optional[str] = None):
    from .model import PipelineModel

    pipe = load_pipeline(name, dtype=dtype, variant=variant)
    pipe.set_progress_bar_config(disable=True)
    return PipelineModel(pipe, height=height, width=width, guidance_scale=guidance_scale,
                         guidance_rescale=guidance_rescale, negative_prompt=negative_prompt)
