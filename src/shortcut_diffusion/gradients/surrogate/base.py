"""What every surrogate-trajectory method shares: its random draws, its checks, and sampling.

A :class:`SurrogateMethod` draws a setting (which steps are active, where the bridge is) per call,
or one per row in fine-tuning (:meth:`SurrogateMethod.rows`), rolls the chain out once without a
graph (:class:`~.chain.Chain`) and builds its differentiable output from the cache
(:meth:`SurrogateMethod.build`). A per-row weight of the loss, where the method has one
(LeapAlign's trajectory similarity), is reported as ``info["loss_weight"]``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan, SampleOutput
from shortcut_diffusion.gradients.base import GradientMethod, Sampling
from shortcut_diffusion.gradients.plans.base import whole_number
from shortcut_diffusion.gradients.surrogate.chain import Chain, check_chain


class SurrogateMethod(GradientMethod):
    """A cached rollout, then a short differentiable path built from it."""

    min_steps: int = 1
    defaults: dict[str, Any] = {}
    """The options' defaults (what :meth:`params` leaves out of the spec)."""

    def __init__(self, seed: Optional[int] = 0):
        self.seed = whole_number(self.name, "seed", seed, allow=(None,))
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.defaults}

    def params(self) -> dict:
        return {k: v for k, v in self.options().items() if v != self.defaults[k]}

    def reseed(self, seed: int) -> "SurrogateMethod":
        self.generator.manual_seed(int(seed))
        return self

    def check(self, scheduler: Any, steps: int, *, start: int = 0, step_kwargs: Optional[dict] = None,
              task: str = "latent") -> None:
        self.check_task(task)
        check_chain(self.name, scheduler, steps, step_kwargs)
        if steps - start < self.min_steps:
            raise UsageError(f"--estimator {self.name} needs at least {self.min_steps} sampled steps, got {steps - start}")
        self.draw(steps - start)  # option errors that depend on the steps, before any work

    # what a method defines ---------------------------------------------------------------------
    def draw(self, n: int) -> Any:
        """This call's random choices for a chain of ``n`` steps (from the method's generator)."""
        raise NotImplementedError

    def build(self, chain: Chain, drawn: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The differentiable output (sampler scale) and the per-row loss weight (or None)."""
        raise NotImplementedError

    def cache(self, sampling: Sampling, x: torch.Tensor) -> Chain:
        """The cached chain the output is built from: a rollout without a graph by default."""
        return Chain.roll(sampling, x)

    def active(self, drawn: Any) -> Sequence[int]:
        """The steps whose network call keeps its graph under ``drawn``."""
        raise NotImplementedError

    # the interface -----------------------------------------------------------------------------
    def held_graphs(self, steps: int) -> int:
        state = self.generator.get_state()
        try:
            return max(len(self.active(self.draw(steps))), 1)
        finally:
            self.generator.set_state(state)

    def rows(self, seeds: Sequence[int], steps: int) -> "DrawnRows":
        return DrawnRows(self, [self.reseed(seed).draw(steps) for seed in seeds])

    def plan_of(self, drawn: Any, n: int) -> Plan:
        active = set(self.active(drawn))
        return Plan(tuple(Mode.GRAD if i in active else Mode.DETACH for i in range(n)))

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        if not torch.is_grad_enabled():
            return self.plain(sampling, x)
        n = (sampling.steps if sampling.stop is None else sampling.stop) - sampling.start
        draws = [self.draw(n) for _ in range(len(x))] if per_sample else [self.draw(n)]
        return self.sample_drawn(sampling, x, draws)

    def sample_drawn(self, sampling: Sampling, x: torch.Tensor, draws: list) -> SampleOutput:
        """Sample with one draw for the batch, or one per row."""
        chain = self.cache(sampling, x)
        if len(draws) == 1:
            out, weight, calls = *self.build(chain, draws[0]), chain.calls
        else:
            parts = []
            for row, drawn in enumerate(draws):
                part = chain.rows(torch.tensor([row], device=x.device))
                parts.append((*self.build(part, drawn), part.calls))
            out = torch.cat([p[0] for p in parts])
            weight = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
            calls = sum(p[2] for p in parts) / len(parts)
        plans = tuple(self.plan_of(d, chain.n) for d in draws)
        info: dict[str, Any] = {"forward": chain.n * chain.rolled + calls, "backward": calls}
        if weight is not None:
            info["loss_weight"] = weight.to(out.dtype)
        return SampleOutput(out, plans[0], plans if len(set(plans)) > 1 else None, info=info)


class DrawnRows(GradientMethod):
    """A surrogate method with one draw already made for every row of a batch (fine-tuning)."""

    def __init__(self, method: SurrogateMethod, draws: list):
        self.method, self.draws, self.name = method, draws, method.name

    def spec_params(self) -> dict:
        return self.method.spec_params()

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        if not torch.is_grad_enabled():
            return self.method.plain(sampling, x)
        return self.method.sample_drawn(sampling, x, self.draws)


def number(name: str, key: str, value: Any, low: float, high: float = float("inf")) -> float:
    """A real option in ``[low, high]``, checked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        bounds = f">= {low}" if high == float("inf") else f"in [{low}, {high}]"
        raise UsageError(f"{name}: {key}={value!r} must be a number {bounds}")
    return float(value)


def choice(name: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UsageError(f"{name}: {key}={value!r} must be one of {', '.join(choices)}")
    return value


def late_biased(lo: int, hi: int, k: int, bias: float, generator: torch.Generator) -> list[int]:
    """``k`` distinct steps of ``lo .. hi - 1``, drawn with probability proportional to ``(i + 1) ** bias``
    (FlowBP's late-step bias: later, less noisy steps are favoured)."""
    k = min(k, hi - lo)
    if k <= 0:
        return []
    weights = torch.arange(lo + 1, hi + 1, dtype=torch.float64) ** bias
    return sorted(lo + int(i) for i in torch.multinomial(weights, k, replacement=False, generator=generator))


def pair(n: int, generator: torch.Generator) -> tuple[int, int]:
    """Two steps ``k < j`` of ``0 .. n - 1``, every unordered pair equally likely (LeapAlign's draw)."""
    first, second = torch.randperm(n, generator=generator)[:2].tolist()
    return min(first, second), max(first, second)
