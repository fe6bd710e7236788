"""AlignProp: randomized truncated backpropagation.

Prabhudesai, Goyal, Pathak, Fragkiadaki, "Aligning Text-to-Image Diffusion Models with Reward
Backpropagation", 2023 (arXiv 2310.03739). The number K of final steps whose network graph is kept
is drawn anew for every sampling call; before them the network output is detached but the
scheduler's linear update stays differentiable (the same detach semantics as SDO, placed at a
random truncation point). The paper uses gradient checkpointing on the kept steps (``checkpoint=1``).

Distributions of K: ``uniform`` on ``[low, high]`` (default ``1..steps``) or ``gaussian`` with
``mean``/``std`` (rounded, clipped to ``1..steps``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import UsageError
from ..sampling import Mode, Plan
from .base import GradientEstimator


class AlignProp(GradientEstimator):
    name = "alignprop"

    def __init__(
        self,
        dist: str = "uniform",
        low: int = 1,
        high: Optional[int] = None,
        mean: Optional[float] = None,
        std: float = 1.0,
        seed=0,
        checkpoint: bool = False,
    ):
        super().__init__(seed=seed, checkpoint=checkpoint)
        if dist not in ("uniform", "gaussian"):
            raise UsageError(f"alignprop: unknown dist {dist!r}; choose uniform or gaussian")
        if dist == "gaussian" and mean is None:
            raise UsageError("alignprop: dist=gaussian needs mean=")
        self.dist, self.low, self.high, self.mean, self.std = dist, int(low), high, mean, float(std)

    def params(self) -> dict:
        if self.dist == "gaussian":
            return {"dist": "gaussian", "mean": self.mean, "std": self.std}
        p = {"low": self.low} if self.low != 1 else {}
        if self.high is not None:
            p["high"] = self.high
        return p

    def draw_k(self, steps: int) -> int:
        if self.dist == "gaussian":
            z = float(torch.randn((), generator=self._generator))
            return min(max(round(self.mean + self.std * z), 1), steps)
        high = steps if self.high is None else int(self.high)
        self._check_k(self.low, steps)
        self._check_k(high, steps)
        if self.low > high:
            raise UsageError(f"alignprop: low={self.low} is greater than high={high}")
        return self._randint(self.low, high)

    def plan(self, steps: int) -> Plan:
        k = self.draw_k(steps)
        return Plan((Mode.DETACH,) * (steps - k) + (self.grad_mode,) * k)
