"""What every per-step plan shares: a name, its own random stream, range checks, and sampling
through the one loop with the plan it makes."""

from __future__ import annotations

import copy
import numbers
from typing import Any, Optional, Sequence

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan, PlanSource, SampleOutput
from shortcut_diffusion.gradients.base import GradientMethod, Sampling


class GradientEstimator(GradientMethod):
    """Decides, per sampling step, what autograd records (see :class:`~shortcut_diffusion.sampling.loop.Mode`).

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

    def check(self, scheduler, steps: int, *, start: int = 0, step_kwargs=None, task: str = "latent") -> None:
        self.check_task(task)
        self.next_plan(steps - start)  # range errors (k > steps), before any work

    def held_graphs(self, steps: int) -> int:
        plan = self.next_plan(steps)
        return max(plan.count(Mode.GRAD, Mode.INPUT_STOP), 1) + (1 if plan.count(Mode.CHECKPOINT) else 0)

    def next_plan(self, steps: int) -> Plan:
        return copy.deepcopy(self).plan(steps)  # a copy: the run's own draws stay untouched

    def moves_start(self, steps: int) -> bool:
        return self.next_plan(steps).reaches_input

    def rows(self, seeds: Sequence[int], steps: int) -> "Drawn":
        return Drawn(self, tuple(self.reseed(seed).plan(steps) for seed in seeds))

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        return self.run_plans(sampling, x, self, per_sample)

    def run_plans(self, sampling: Sampling, x: torch.Tensor, plans: PlanSource, per_sample: bool = False
                  ) -> SampleOutput:
        """Sample with ``plans`` (this estimator, or plans it drew): the one loop."""
        return sampling.run(x, plans, per_sample)

    def spec_params(self) -> dict:
        params = self.params()
        if self.checkpoint != self.default_checkpoint:
            params["checkpoint"] = int(self.checkpoint)
        return params

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


class Drawn(GradientMethod):
    """A plan estimator with one plan already drawn for every row of a batch (fine-tuning)."""

    def __init__(self, estimator: GradientEstimator, plans: tuple[Plan, ...]):
        self.estimator, self.plans = estimator, plans
        self.name = estimator.name

    def spec_params(self) -> dict:
        return self.estimator.spec_params()

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        return self.estimator.run_plans(sampling, x, list(self.plans))


def whole_number(estimator: str, key: str, value: Any, *, allow: tuple = ()) -> Any:
    """An integer option of an estimator spec (or one of the words ``allow``), checked."""
    if value in allow or value is None and None in allow:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        words = "".join(f" or {word}" for word in allow if word is not None)
        raise UsageError(f"{estimator}: {key}={value!r} must be a whole number{words}")
    return value
