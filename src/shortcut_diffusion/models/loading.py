"""Models by name or path: the one factory every command calls.

It sits above the model classes (``models``, ``testbed``, ``pipelines``) and applies the
precision policy's first rule: the model's frozen weights are loaded in, or cast to, ``dtype``.

- ``digits``: the bundled digits testbed; ``digits-flow``: its rectified-flow twin (flow-matching
  Euler scheduler); a directory with ``testbed.json``: a saved one;
- ``moving-digits``: the bundled moving-digits video testbed (a directory with
  ``network.safetensors``: a saved one);
- ``toy``: a small random class-conditional UNet built in code;
- ``random:FAMILY[:RESOLUTION][:tiny]`` (``sd15``, ``sdxl``, ``sd3``, ``flux``; ``sd15-random[:RESOLUTION]``
  is ``random:sd15``): the family's real network with random weights (cost at real scale);
  ``random:wan[:HEIGHTxWIDTH][:tiny][:blocks]`` with ``num_frames``: Wan 2.1 T2V 1.3B's transformer and VAE;
- a diffusers pipeline: a ``save_pretrained`` directory or a hub id (SD 1.x/2.x, SDXL, SD3, Flux,
  pixel-space DDPM/DDIM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.precision import dtype_of


def _digits() -> DiffusionModel:
    from shortcut_diffusion.models.testbed import load_digits_model

    return load_digits_model()


def _digits_flow() -> DiffusionModel:
    from shortcut_diffusion.models.testbed import BUNDLED_FLOW, load_digits_model

    return load_digits_model(BUNDLED_FLOW)


def _moving_digits() -> DiffusionModel:
    from shortcut_diffusion.models.testbed.moving.model import load_moving_digits

    return load_moving_digits()


def _toy() -> DiffusionModel:
    from shortcut_diffusion.models.toy import toy_model

    return toy_model()


BUILT_IN: dict[str, Callable[[], DiffusionModel]] = {"digits": _digits, "digits-flow": _digits_flow,
                                                     "moving-digits": _moving_digits, "toy": _toy}


def load_model(name: str, *, dtype: str = "fp32", device: Any = None, height: Optional[int] = None,
               width: Optional[int] = None, guidance_scale: Optional[float] = None, guidance_rescale: float = 0.0,
               negative_prompt: Optional[str] = None, variant: Optional[str] = None,
               progress: bool = True, num_frames: Optional[int] = None, image: Any = None) -> DiffusionModel:
    """The model ``name`` (see the module docstring) with its frozen weights in ``dtype``, on
    ``device`` (default: where it was loaded, the CPU). ``height``, ``width``, ``negative_prompt``
    and ``guidance_rescale`` apply to text-to-image pipelines; ``num_frames`` to video pipelines;
    ``image`` (a path or a PIL image: the fixed conditioning image) to image-to-video pipelines;
    ``guidance_scale`` to every guided model."""
    torch_dtype = dtype_of(dtype)
    pipeline_only = {"--height": height, "--width": width, "--negative-prompt": negative_prompt, "--frames": num_frames,
                     "--image": image}
    if name in BUILT_IN:
        model = BUILT_IN[name]()
    elif name == "random:wan" or name.startswith("random:wan:"):
        from shortcut_diffusion.models.shaped_video import parse_wan

        model = parse_wan(name.split(":")[2:], num_frames)
        pipeline_only.pop("--frames")  # a video family takes --frames
    elif name == "sd15-random" or name.startswith(("sd15-random:", "random:")):
        from shortcut_diffusion.models.shaped import parse_random

        model = parse_random(name)()
    elif (Path(name) / "network.safetensors").is_file():
        from shortcut_diffusion.models.testbed.moving.model import load_moving_digits

        model = load_moving_digits(name)
    elif (Path(name) / "testbed.json").is_file():
        from shortcut_diffusion.models.testbed import load_digits_model

        model = load_digits_model(name)
    else:
        from shortcut_diffusion.models.pipelines import from_pipeline, load_pipeline, looks_like_pipeline

        if not looks_like_pipeline(name):
            raise UsageError(f"unknown model {name!r}; choose one of {', '.join(BUILT_IN)}, random:FAMILY[:RESOLUTION], "
                             "a saved testbed directory, or a diffusers pipeline (directory or hub id)")
        pipe = load_pipeline(name, dtype=dtype, variant=variant, progress=progress)
        pipe.set_progress_bar_config(disable=True)
        options = {"height": height, "width": width, "guidance_scale": guidance_scale,
                   "guidance_rescale": guidance_rescale, "negative_prompt": negative_prompt, "num_frames": num_frames,
                   "image": image}
        model = from_pipeline(pipe, **options)
        if model.condition_kind != "prompt":
            _refuse_unused(name, model, pipeline_only)
        return model.to(device)
    _refuse_unused(name, model, pipeline_only)
    if guidance_scale is not None:
        model.guidance_scale = float(guidance_scale)
    return model.to(device, dtype=torch_dtype)


def _refuse_unused(name: str, model: DiffusionModel, options: dict[str, Any]) -> None:
    """Options only text-to-image pipelines use, given for ``model``: refused, naming the first. A
    video model of a fixed frame count (``moving-digits``) takes ``--frames`` at that count only."""
    frames = options.get("--frames")
    if frames is not None and len(model.image_shape) == 4:
        if int(frames) != model.image_shape[0]:
            raise UsageError(f"--frames {frames}: {name!r} makes videos of {model.image_shape[0]} frames only "
                             "(a fixed size)")
        options = {key: value for key, value in options.items() if key != "--frames"}
    given = [option for option, value in options.items() if value is not None]
    if given:
        kind = {"class": "a class-conditional", "none": "an unconditional"}.get(model.condition_kind, "a")
        size = "x".join(map(str, model.image_shape))
        raise UsageError(f"{given[0]} applies to text-to-image pipelines; {name!r} is {kind} model of fixed size "
                         f"{size}")


def apply_thread_policy(model: DiffusionModel, threads: Optional[int] = None) -> int:
    """Set torch's intra-op CPU threads for a run of ``model`` and return the number.

    ``threads`` when given; else ``OMP_NUM_THREADS`` when the user set it; else the model's own
    :attr:`~shortcut_diffusion.models.base.DiffusionModel.cpu_threads` (1 for the bundled digits
    and toy models, which run several times faster on one thread when anything else is running);
    else torch's default. Only CPU runs are affected."""
    import os

    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ and model.device.type == "cpu":
        threads = model.cpu_threads
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()
