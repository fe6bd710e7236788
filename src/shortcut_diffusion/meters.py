"""Measuring what an estimator costs: network evaluations and bytes saved for backward.

- :class:`CountingDenoiser` counts network forward calls (checkpoint recomputations included) and
  backward passes through the network (a gradient hook on each output that is part of the graph),
  and sums the wall-clock of the forward calls (synchronising CUDA around each).
- :class:`SavedTensorMeter` measures the tensors autograd saves for backward with
  ``torch.autograd.graph.saved_tensors_hooks``: the distinct storages packed while it is active,
  each counted once, excluding the storages of given tensors (model weights, resident anyway).
  Inside a non-reentrant checkpoint region torch packs its own placeholders instead, which is
  exactly what checkpointing saves. ``bytes`` counts every storage packed while active;
  ``peak_bytes`` the most held at once (a storage is released when the graph saving it is freed).
  They agree for one graph kept until backward; methods that build and free one step's graph at a
  time (the adjoint, DOODL) are measured by the peak.
- :func:`budget_clock` is the clock that time budgets and per-step seconds read.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

import torch
from torch import nn


BUDGET_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def budget_clock() -> float:
    """Seconds on the clock that time budgets (``sdo finetune --minutes``, the benchmarks' equal
    budgets) and per-step ``seconds`` read: wall-clock, or with ``SDO_BUDGET_CLOCK=cpu`` the
    process's CPU time. With one thread (``OMP_NUM_THREADS=1``) CPU time equals wall-clock on an
    idle machine and is barely moved by other processes on a shared one, so benchmarks there use it."""
    kind = os.environ.get("SDO_BUDGET_CLOCK", "wall")
    if kind not in BUDGET_CLOCKS:
        from shortcut_diffusion.errors import UsageError

        raise UsageError(f"SDO_BUDGET_CLOCK must be one of {', '.join(BUDGET_CLOCKS)}, got {kind!r}")
    return BUDGET_CLOCKS[kind]()


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


class _Held:
    """A saved tensor, and the meter it is counted in until the graph releases it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: int, meter: "SavedTensorMeter"):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: ``with SavedTensorMeter(exclude=model.parameters()) as m: ...; m.bytes``."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {_storage_key(t) for t in exclude}
        self._storages: dict[int, int] = {}
        self._live: dict[int, list[int]] = {}  # storage -> [saved tensors holding it, its bytes]
        self._held = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, tensor: torch.Tensor) -> Any:
        try:
            key = _storage_key(tensor)
            nbytes = tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. wrappers)
            return tensor
        if not key or key in self._exclude:
            return tensor
        self._storages[key] = max(self._storages.get(key, 0), nbytes)
        entry = self._live.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self._held += nbytes
            self.peak_bytes = max(self.peak_bytes, self._held)
        entry[0] += 1
        return _Held(tensor, key, self)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self._held -= entry[1]
            del self._live[key]

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def model_weights(model: Any) -> list[torch.Tensor]:
    """Every weight of ``model``'s networks: resident anyway, so excluded from what a meter counts."""
    return [p for m in model.modules() for p in m.parameters()]


def _unpack(packed: Any) -> torch.Tensor:
    return packed.tensor if isinstance(packed, _Held) else packed


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
