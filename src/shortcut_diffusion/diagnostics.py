"""Measuring what an estimator costs: network evaluations and bytes saved for backward.

- :class:`CountingDenoiser` counts network forward calls (checkpoint recomputations included) and
  backward passes through the network (a gradient hook on each output that is part of the graph),
  and sums the wall-clock of the forward calls (synchronising CUDA around each).
- :class:`SavedTensorMeter` measures the tensors autograd saves for backward with
  ``torch.autograd.graph.saved_tensors_hooks``: the distinct storages packed while it is active,
  each counted once, excluding the storages of given tensors (model weights, resident anyway).
  Inside a non-reentrant checkpoint region torch packs its own placeholders instead, which is
  exactly what checkpointing saves.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import torch
from torch import nn


class CountingDenoiser(nn.Module):
    def __init__(self, denoiser: Any):
        super().__init__()
        self.denoiser = denoiser
        self.forward_count = 0
        self.backward_count = 0
        self.forward_seconds = 0.0

    def _on_backward(self, grad: torch.Tensor) -> None:
        self.backward_count += 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.forward_count += 1
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = self.denoiser(x, t, cond)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.forward_seconds += time.perf_counter() - start
        if out.requires_grad:
            out.register_hook(self._on_backward)
        return out


class SavedTensorMeter:
    """Context manager: ``with SavedTensorMeter(exclude=model.parameters()) as m: ...; m.bytes``."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {_storage_key(t) for t in exclude}
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            key = _storage_key(tensor)
            nbytes = tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. wrappers)
            return tensor
        if key and key not in self._exclude:
            self._storages[key] = max(self._storages.get(key, 0), nbytes)
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
