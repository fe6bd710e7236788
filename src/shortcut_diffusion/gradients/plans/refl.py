"""ReFL: one differentiated step at a random late timestep, its predicted x0 scored.

Xu et al., "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
NeurIPS 2023 (arXiv 2304.05977), Reward Feedback Learning. Sampling runs without grad up to a step
s drawn uniformly from the last part of the schedule (``low``..``high`` as fractions of the steps,
default the last quarter); step s runs with grad and sampling ends there, returning the step's
predicted clean sample, which goes to the reward. The output is therefore not the final sample.
Gradients stop before step s: for the initial noise the ReFL gradient is exactly zero.
"""

from __future__ import annotations

import math

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan
from shortcut_diffusion.gradients.plans.base import GradientEstimator


class ReFL(GradientEstimator):
    name = "refl"

    def __init__(self, low: float = 0.75, high: float = 1.0, seed=0, checkpoint: bool = False):
        super().__init__(seed=seed, checkpoint=checkpoint)
        low, high = float(low), float(high)
        if not 0.0 <= low <= high <= 1.0:
            raise UsageError(f"refl: need 0 <= low <= high <= 1, got low={low}, high={high}")
        self.low, self.high = low, high

    def params(self) -> dict:
        return {} if (self.low, self.high) == (0.75, 1.0) else {"low": self.low, "high": self.high}

    def plan(self, steps: int) -> Plan:
        first = min(int(math.floor(self.low * steps)), steps - 1)
        last = max(min(int(math.ceil(self.high * steps)) - 1, steps - 1), first)
        s = self._randint(first, last)
        return Plan((Mode.STOP,) * s + (self.grad_mode,) + (Mode.STOP,) * (steps - s - 1), x0_at=s)
