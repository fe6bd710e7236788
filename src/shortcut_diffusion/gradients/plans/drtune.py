"""DRTune: stop the gradient at every denoiser input, keep the network graph at K sampled steps.

Wu, Zhang, Wang, Li, Xu, Ji, Liu, "Deep Reward Supervisions for Tuning Text-to-Image Diffusion
Models", ECCV 2024 (arXiv 2405.00760). The network output of every step outside the K training
steps is detached; at the K training steps the network call keeps its graph for the weights and
the conditioning but runs on ``x.detach()`` (:attr:`~shortcut_diffusion.sampling.loop.Mode.INPUT_STOP`);
the scheduler's linear update stays differentiable everywhere.

Where it differs from SDO with K kept steps (``sdo:k=K,keep=random``), which differentiates the
kept network calls with respect to their input as well (``tests/test_drtune.py`` checks each point):

- **The initial latent**, or anything that reaches the network only through its input: DRTune's
  gradient is the linear path alone, the gradient of a plan that keeps no network graph.
- **Weights and conditioning, one kept step**: DRTune and SDO agree exactly. With every earlier
  output detached, the input of the one kept step does not depend on the weights.
- **Weights and conditioning, several kept steps**: SDO also carries the path from an earlier kept
  step's output through a later kept step's input Jacobian; DRTune drops it, so its gradient is
  exactly the sum of its one-step gradients.

Which steps train: ``keep=random`` (default) draws K distinct steps uniformly per call; ``first``
and ``last`` take the first or last K. ``k`` defaults to 1.
"""

from __future__ import annotations

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan
from shortcut_diffusion.gradients.plans.base import GradientEstimator, whole_number

KEEP = ("random", "first", "last")


class DRTune(GradientEstimator):
    name = "drtune"

    def __init__(self, k: "int | str" = 1, keep: str = "random", seed=0, checkpoint: bool = False):
        super().__init__(seed=seed, checkpoint=False)
        if checkpoint:
            raise UsageError("drtune: checkpoint=1 is not supported (its kept calls hold no input graph to save)")
        if keep not in KEEP:
            raise UsageError(f"drtune: keep={keep!r} must be one of {', '.join(KEEP)}")
        self.k, self.keep = whole_number(self.name, "k", k, allow=("all",)), keep

    def params(self) -> dict:
        p = {} if self.k == 1 else {"k": self.k}
        return p | ({} if self.keep == "random" else {"keep": self.keep})

    def plan(self, steps: int) -> Plan:
        kept = set(self._choose_steps(self.k, steps, self.keep))
        return Plan(tuple(Mode.INPUT_STOP if i in kept else Mode.DETACH for i in range(steps)))
