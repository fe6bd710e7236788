"""SDO: Shortcut Diffusion Optimization, the one-step gradient shortcut.

Dou, Li, Jiang, Li, Yang, Yao, Deng, "You Only Look One Step: Accelerating Backpropagation in
Diffusion Sampling with Gradient Shortcuts", IEEE TPAMI 2025 (arXiv 2505.07477).

The network output of every step except the kept one is computed under ``no_grad`` and treated as
a constant; the scheduler's linear update ``x_{i+1} = a_i x_i + b_i eps_i`` stays differentiable,
so the gradient reaches the optimized variable through that shortcut plus one network Jacobian.

Closed form on a linear toy denoiser ``eps(x) = W x`` with DDIM (eta = 0), where
``a_i = sqrt(abar_prev / abar)`` and ``b_i = sqrt(1 - abar_prev) - sqrt(abar_prev (1 - abar) / abar)``
(``abar`` at step i's timestep, ``abar_prev`` at the next one, or ``final_alpha_cumprod`` after the
last), for a reward ``r = <g, x_N>``:

- full backpropagation: ``dr/dx_0 = [prod_i (a_i I + b_i W)]^T g``;
- SDO keeping step j:   ``dr/dx_0 = (prod_{i != j} a_i) (a_j I + b_j W)^T g``.

The memory of the sampling graph is therefore one network graph plus a few scalars per step,
independent of the number of steps. ``tests/test_closed_form.py`` checks this formula.

Which step is kept (``keep``): ``first`` (default; the paper's choice for latents, the step right
after the optimized latent), ``last``, ``random`` (a new step per call; the default for weights
and embeddings), or a step index. ``k`` > 1 keeps k steps (first k, last k, or k distinct random
steps; ``k=all`` keeps every step, which is full backpropagation) for ablations.

``rollout=cached`` computes the same gradient from a cached rollout (:mod:`..cached`): one sampling
pass without a graph, then the scheduler's updates replayed on the cached network outputs with the
kept step re-run. It costs one network call more than the default ``rollout=loop``, which detaches
the outputs inside the loop.
"""

from __future__ import annotations

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan, PlanSource, SampleOutput
from shortcut_diffusion.gradients.base import Sampling
from shortcut_diffusion.gradients.cached import cached_rollout, replay
from shortcut_diffusion.gradients.plans.base import GradientEstimator, whole_number

KEEP_CHOICES = ("first", "last", "random")
ROLLOUTS = ("loop", "cached")


class SDO(GradientEstimator):
    name = "sdo"

    def __init__(self, keep: "str | int" = "first", k: "int | str" = 1, rollout: str = "loop", seed=0,
                 checkpoint: bool = False):
        super().__init__(seed=seed, checkpoint=checkpoint)
        if rollout not in ROLLOUTS:
            raise UsageError(f"sdo: rollout={rollout!r} must be loop (detach inside the loop) or cached")
        self.rollout = rollout
        if keep is None or isinstance(keep, (bool, float)):
            raise UsageError(f"sdo: keep={keep!r} must be first, last, random or a step index")
        if isinstance(keep, str) and keep not in KEEP_CHOICES:
            try:
                keep = int(keep)
            except ValueError:
                raise UsageError(
                    f"sdo: keep={keep!r} must be first, last, random or a step index"
                ) from None
        self.keep, self.k = keep, whole_number(self.name, "k", k, allow=("all",))
        if isinstance(keep, int) and k != 1:
            raise UsageError("sdo: k > 1 needs keep=first, last or random, not a step index")

    def params(self) -> dict:
        p = {} if self.keep == "first" else {"keep": self.keep}
        if self.k != 1:
            p["k"] = self.k
        if self.rollout != "loop":
            p["rollout"] = self.rollout
        return p

    def kept_steps(self, steps: int) -> list[int]:
        if isinstance(self.keep, int):
            index = self.keep + steps if self.keep < 0 else self.keep
            if not 0 <= index < steps:
                raise UsageError(f"sdo: keep={self.keep} is out of range for {steps} steps")
            return [index]
        return self._choose_steps(self.k, steps, self.keep)

    def plan(self, steps: int) -> Plan:
        kept = set(self.kept_steps(steps))
        return Plan(tuple(self.grad_mode if i in kept else Mode.DETACH for i in range(steps)))

    def run_plans(self, sampling: Sampling, x: torch.Tensor, plans: PlanSource, per_sample: bool = False
                  ) -> SampleOutput:
        if self.rollout == "loop" or not torch.is_grad_enabled():
            return super().run_plans(sampling, x, plans, per_sample)
        return replay(sampling, x, cached_rollout(sampling, x), plans, per_sample)
