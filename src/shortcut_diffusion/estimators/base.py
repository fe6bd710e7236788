"""What every gradient estimator shares: a name, its own random stream, range checks."""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch

from ..errors import UsageError
from ..sampling import Mode, Plan


class GradientEstimator:
    """Decides, per sampling step, what autograd records (see :class:`~shortcut_diffusion.sampling.Mode`).

    Subclasses implement :meth:`plan`. Random choices (a truncation point, a kept step) are drawn
    from the estimator's own generator, never from the scheduler's noise stream, so estimators
    compared on one seed sample identical noise.
    """

    name: str = ""
    default_checkpoint: bool = False
    """Whether the kept steps are checkpointed unless ``checkpoint=`` says otherwise."""

    def __init__(self, seed: Optional[int] = 0, checkpoint: bool = False):
        self.seed = whole_number(self.name or "estimator", "seed", seed, allow=(None,))
        self.checkpoint = bool(checkpoint)
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))

    def reseed(self, seed: int) -> "GradientEstimator":
        """Restart the estimator's random stream from ``seed`` (per-sample, resumable draws)."""
        self._generator.manual_seed(int(seed))
        return self

    @property
    def grad_mode(self) -> Mode:
        """The mode of the steps whose network graph is kept."""
        return Mode.CHECKPOINT if self.checkpoint else Mode.GRAD

    def plan(self, steps: int) -> Plan:
        raise NotImplementedError

    def params(self) -> dict:
        """The settings that distinguish this estimator from its defaults (for reports)."""
        return {}

    @property
    def spec(self) -> str:
        """``name`` or ``name:key=value,...``: the string :func:`get_estimator` parses back."""
        params = self.params()
        if self.checkpoint != self.default_checkpoint:
            params["checkpoint"] = int(self.checkpoint)
        if not params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in params.items())

    def __repr__(self) -> str:
        return f"<estimator {self.spec}>"

    # helpers for subclasses -------------------------------------------------------------------
    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]`` from this estimator's generator."""
        return int(torch.randint(low, high + 1, (1,), generator=self._generator))

    def _choose_steps(self, k: "int | str", steps: int, keep: str) -> list[int]:
        """``k`` steps of ``steps``: the ``first`` k, the ``last`` k, or k distinct ``random`` ones."""
        k = resolve_k(k, steps)
        self._check_k(k, steps)
        if keep == "first":
            return list(range(k))
        if keep == "last":
            return list(range(steps - k, steps))
        return sorted(torch.randperm(steps, generator=self._generator)[:k].tolist())

    def _check_k(self, k: int, steps: int) -> None:
        if not 1 <= k <= steps:
            raise UsageError(f"{self.name}: k={k} is out of range 1..{steps} for {steps} steps")


def resolve_k(k: "int | str", steps: int) -> int:
    """``k`` as an int, where ``"all"`` means every step."""
    return steps if k == "all" else int(k)


def whole_number(estimator: str, key: str, value: Any, *, allow: tuple = ()) -> Any:
    """An integer option of an estimator spec (or one of the words ``allow``), checked."""
    if value in allow or value is None and None in allow:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        words = "".join(f" or {word}" for word in allow if word is not None)
        raise UsageError(f"{estimator}: {key}={value!r} must be a whole number{words}")
    return value
