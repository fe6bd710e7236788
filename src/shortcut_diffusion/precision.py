"""The one precision policy, for every command and model (``--dtype fp32|bf16|fp16``).

- Frozen weights run in ``--dtype`` (pipelines are loaded in it; built-in models are cast).
- Everything optimized keeps a float32 master copy: latents, LoRA adapters, embeddings, and for
  full fine-tuning the network's weights themselves.
- The forward pass (sampling and decoding) runs under ``torch.autocast`` in ``--dtype``.
- fp16 scales the loss (``torch.amp.GradScaler``): a step whose gradient over- or underflowed is
  skipped and the scale lowered, instead of writing NaNs into the weights. bf16 has fp32's range
  and needs no scaling.

>>> p = Precision("fp16", "cpu")
>>> p.dtype, p.scaled
(torch.float16, True)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Union

import torch

from shortcut_diffusion.errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INIT_SCALE = 2.0**10
"""fp16's first loss scale: large enough to keep small gradients from underflowing, small enough
that the first steps of a run are rarely skipped for overflow (2**16, the usual default, skips a
few)."""


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


class Precision:
    """Autocast and loss scaling for one run in ``name`` (fp32, bf16 or fp16) on ``device``."""

    def __init__(self, name: str, device: Union[str, torch.device]):
        self.name, self.dtype = name, dtype_of(name)
        self.device = torch.device(device)
        self.scaled = name == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=INIT_SCALE, enabled=self.scaled)
        self.skipped = 0
        """Optimizer steps skipped because the scaled gradient was not finite (fp16 only)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (before clipping or reading their norm)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step, skipped (and the scale lowered) when fp16 gradients are not finite.

        Returns whether the step was taken."""
        if not self.scaled:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        taken = self.scaler.get_scale() >= before
        self.skipped += not taken
        return taken

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped = int(state.get("skipped", 0))


def master_copies(params: Iterable[torch.nn.Parameter]) -> None:
    """Trained tensors in float32, whatever the frozen weights' dtype (in place)."""
    for p in params:
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
