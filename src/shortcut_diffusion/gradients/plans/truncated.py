"""DRaFT-K: backpropagate through the last K sampling steps only.

Clark, Vicol, Swersky, Fleet, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards",
ICLR 2024 (arXiv 2309.17400). Steps before the last K run without grad and the sample is
detached at their end (gradients stop there), so only the last K network calls and updates are
differentiated; K = 1 is the paper's recommended setting. With K = all steps it is full
backpropagation. Note that for a target that only enters before the last K steps (the initial
noise), the truncated gradient is exactly zero.
"""

from __future__ import annotations

from shortcut_diffusion.sampling.loop import Mode, Plan
from shortcut_diffusion.gradients.plans.base import GradientEstimator, resolve_k, whole_number


class Truncated(GradientEstimator):
    name = "truncated"

    def __init__(self, k: "int | str" = 1, seed=0, checkpoint: bool = False):
        super().__init__(seed=seed, checkpoint=checkpoint)
        self.k = whole_number(self.name, "k", k, allow=("all",))

    def params(self) -> dict:
        return {"k": self.k}

    def plan(self, steps: int) -> Plan:
        k = resolve_k(self.k, steps)
        self._check_k(k, steps)
        return Plan((Mode.STOP,) * (steps - k) + (self.grad_mode,) * k)
