"""Loading pipelines the way diffusers does: a ``save_pretrained`` directory or a hub id."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.precision import dtype_of



def looks_like_pipeline(name: str) -> bool:
    """A local directory (a pipeline, or an error saying why not), or a hub id (``org/name``)."""
    path = Path(name)
    if path.is_dir():
        return True
    return name.count("/") == 1 and not name.startswith((".", "/")) and not path.suffix


def load_pipeline(name: str, dtype: str = "fp32", variant: Optional[str] = None, progress: bool = True) -> Any:
    """``DiffusionPipeline.from_pretrained(name)`` with the weights in ``dtype``; clear errors.

    ``HF_HUB_OFFLINE=1`` is respected by the hub client: only the local cache is read.
    """
    from diffusers import DiffusionPipeline

    torch_dtype = dtype_of(dtype)
    path = Path(name)
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise UsageError(f"{name} is a directory but not a saved pipeline (no model_index.json); "
                         "save one with pipe.save_pretrained(DIR)")
    try:
        with warnings.catch_warnings(), _progress_bars(progress):
            # newer diffusers call it dtype; older ones know only torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
            return DiffusionPipeline.from_pretrained(name, torch_dtype=torch_dtype, variant=variant)
    except Exception as error:  # a damaged file raises OSError, safetensors' or torch's own errors
        if path.is_dir():
            raise UsageError(f"could not load the pipeline in {name}: {_first_line(error)} "
                             "(is a weights file truncated or damaged? save it again with pipe.save_pretrained)") from error
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = (" HF_HUB_OFFLINE is set: only models already in the local cache can be loaded." if offline
                else " Check the path or hub id, your network, and that you accepted the model's license on the hub.")
        raise UsageError(f"could not load the pipeline {name!r}: {_first_line(error)}.{hint}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """The loaders' own progress bars (diffusers, transformers), off unless ``enabled``."""
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()
