"""Will a batch fit? An estimate made before a run starts, from one measured sample.

The memory of an optimization step is dominated by what autograd keeps: the network graphs an
estimator keeps (one per kept step and sample, guided calls included) and the decoder's graph.
:func:`check_batch_fits` measures both for one sample (one network call with grad and one
differentiable decode, with :class:`~shortcut_diffusion.meters.SavedTensorMeter`), scales
them by the batch and the estimator's plan, and refuses a batch that needs more than the free
memory of the device (free CUDA memory, or ``MemAvailable`` on Linux), naming a batch that fits.
It is an estimate: the forward pass of a detached step and the allocator add a little on top.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from shortcut_diffusion.meters import SavedTensorMeter, model_weights
from shortcut_diffusion.errors import UsageError

HEADROOM = 0.8
"""The share of the free memory a run may plan to fill."""


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device``, or None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def sample_graph_bytes(model: Any, label: Any, *, guidance: Optional[float] = None, precision: Any = None,
                       frames: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """Bytes autograd keeps for one sample: ``(one guided network call, one decode)``; a video
    model's decode of only ``frames`` when given (what the reward reads)."""
    import contextlib

    weights = model_weights(model)
    x = torch.randn((1, *model.sample_shape), device=model.device, requires_grad=True)
    cond = model.conditioning([label])
    t = torch.tensor(int(model.scheduler.config.num_train_timesteps) // 2, device=model.device)
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    with autocast, torch.enable_grad():
        with SavedTensorMeter(exclude=weights) as network:
            model.denoiser(guidance)(x, t, cond)
        with SavedTensorMeter(exclude=weights) as decode:
            model.decode(x) if frames is None else model.decode_frames(x, frames)
    return network.bytes, decode.bytes


def check_batch_fits(model: Any, estimator: Any, *, steps: int, batch: int, labels: Sequence[Any],
                     guidance: Optional[float] = None, precision: Any = None, option: str = "--batch",
                     frames: Optional[Sequence[int]] = None) -> None:
    """Refuse (UsageError) a batch whose sampling and decoding graphs would not fit the device
    (a video's graphs are measured over all its frames; its decode over ``frames`` when given)."""
    free = available_bytes(model.device)
    if free is None:
        return
    network, decode = sample_graph_bytes(model, labels[0], guidance=guidance, precision=precision, frames=frames)
    kept = estimator.held_graphs(steps)
    per_sample = network * kept + decode
    need = per_sample * batch
    if need <= HEADROOM * free:
        return
    fits = max(int(HEADROOM * free // max(per_sample, 1)), 0)
    advice = f"use {option} {fits} or fewer" if fits else "use a smaller model, resolution or an estimator that keeps fewer graphs"
    raise UsageError(f"{option} {batch} needs about {need / 2**30:.1f} GiB for its sampling and decoding graphs "
                     f"({estimator.spec} keeps {kept} network graph(s) per sample, {per_sample / 2**20:.1f} MiB per "
                     f"sample) but about {free / 2**30:.1f} GiB is free on {model.device}: {advice}")
