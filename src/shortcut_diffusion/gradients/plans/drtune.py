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

Which steps train (``select``): ``even`` (default, the paper's selection) stops sampling early at a
step ``s`` drawn uniformly from the last ``stop`` fraction of the steps (default 0.4; ``stop=0``
runs to the last step) and scores that step's predicted clean sample; the K trained steps are
evenly spaced over the steps run, stride ``floor(L / K)`` for ``L = s + 1`` steps, from a random
offset. The paper's own offset and early-stop ranges are not public; these are the choices of
FlowBP's DRTune re-implementation (arXiv 2606.11075), with its ``k=3``. ``uniform`` draws K distinct
steps uniformly over all steps and returns the final sample (``k`` then defaults to 1); ``first``
and ``last`` take the first or last K.
"""

from __future__ import annotations

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan
from shortcut_diffusion.gradients.plans.base import GradientEstimator, resolve_k, whole_number

SELECT = ("even", "uniform", "first", "last")
KEEP = {"random": "uniform", "first": "first", "last": "last"}
"""The older ``keep=`` spelling of ``select``."""


class DRTune(GradientEstimator):
    name = "drtune"

    def __init__(self, k: "int | str | None" = None, select: str = "even", stop: float = 0.4, keep: "str | None" = None,
                 seed=0, checkpoint: bool = False):
        super().__init__(seed=seed, checkpoint=False)
        if checkpoint:
            raise UsageError("drtune: checkpoint=1 is not supported (its kept calls hold no input graph to save)")
        if keep is not None:
            if keep not in KEEP:
                raise UsageError(f"drtune: keep={keep!r} must be one of {', '.join(KEEP)} (or use select=)")
            select = KEEP[keep]
        if select not in SELECT:
            raise UsageError(f"drtune: select={select!r} must be one of {', '.join(SELECT)}")
        if isinstance(stop, bool) or not isinstance(stop, (int, float)) or not 0 <= stop <= 1:
            raise UsageError(f"drtune: stop={stop!r} must be a fraction of the steps in [0, 1]")
        self.select, self.stop = select, float(stop)
        self.k = whole_number(self.name, "k", (3 if select == "even" else 1) if k is None else k, allow=("all",))

    def params(self) -> dict:
        p = {} if self.select == "even" else {"select": self.select}
        if self.k != (3 if self.select == "even" else 1):
            p["k"] = self.k
        return p | ({"stop": self.stop} if self.select == "even" and self.stop != 0.4 else {})

    def plan(self, steps: int) -> Plan:
        if self.select == "even":
            return self._even(steps)
        kept = set(self._choose_steps(self.k, steps, "random" if self.select == "uniform" else self.select))
        return Plan(tuple(Mode.INPUT_STOP if i in kept else Mode.DETACH for i in range(steps)))

    def _even(self, steps: int) -> Plan:
        """The paper's selection: an early stop ``s``, then K evenly spaced steps of ``0 .. s``."""
        window = int(round(steps * self.stop))
        s = steps - self._randint(1, window) if window > 0 else steps - 1
        run = s + 1
        k = min(resolve_k(self.k, steps), run)
        self._check_k(k, steps)
        stride = max(1, run // k)
        if (k - 1) * stride > run - 1:
            stride = max(1, (run - 1) // max(k - 1, 1))
        offset = self._randint(0, run - 1 - (k - 1) * stride)
        kept = {offset + m * stride for m in range(k)}
        modes = tuple(Mode.INPUT_STOP if i in kept else Mode.DETACH for i in range(steps))
        return Plan(modes, x0_at=s)
