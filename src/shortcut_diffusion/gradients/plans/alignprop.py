"""AlignProp: randomized truncated backpropagation.

Prabhudesai, Goyal, Pathak, Fragkiadaki, "Aligning Text-to-Image Diffusion Models with Reward
Backpropagation", 2023 (arXiv 2310.03739). Before the truncation point the network output is
detached while the scheduler's linear update stays differentiable (the same detach semantics as
SDO, at a random place), and the kept network calls run under gradient checkpointing.

Two ways of drawing the truncation, both published:

``draw=step`` (default: the authors' training script, ``main.py`` with ``truncated_backprop_rand``,
and TRL's former ``AlignPropTrainer``, ``pipeline_step_with_grad`` with its
``truncated_rand_backprop_minmax=(0, 50)``)
    at every step i a fresh integer ``T ~ U[low, high]`` (default ``[0, steps]``, the authors'
    ``(0, 50)`` for 50 steps) is drawn, and step i keeps its network graph iff ``T <= i``: late
    steps are kept more often (step i with probability ``(i + 1 - low) / (high - low + 1)``), about
    half of them on average.
``draw=call`` (the repository's ``sd_pipeline.py``)
    once per sampling call, the last K steps keep their graph, K drawn ``uniform`` on
    ``[low, high]`` (default ``1..steps``) or ``gaussian`` with ``mean``/``std`` (rounded,
    clipped to ``1..steps``).

The repository parametrises the gaussian draw by the truncation *index*, the first step that
keeps its graph (mean 42, std 5 of 50 steps), not by K. ``index_mean=I,index_std=S`` takes those
numbers as they are: K = steps - index, so ``draw=call,index_mean=42,index_std=5`` at 50 steps
keeps the same steps, draw for draw, as ``draw=call,dist=gaussian,mean=8,std=5`` (about 8 final
steps). ``index_mean`` implies ``dist=gaussian``; ``index_std`` is ``std``.

Gradient checkpointing is on by default, as published; ``checkpoint=0`` keeps the kept steps'
activations instead (faster, and memory that grows with the number of kept steps).
"""

from __future__ import annotations

from typing import Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan
from shortcut_diffusion.gradients.plans.base import GradientEstimator, whole_number

DRAWS = ("step", "call")


class AlignProp(GradientEstimator):
    name = "alignprop"
    default_checkpoint = True

    def __init__(
        self,
        draw: str = "step",
        dist: str = "uniform",
        low: Optional[int] = None,
        high: Optional[int] = None,
        mean: Optional[float] = None,
        std: Optional[float] = None,
        index_mean: Optional[float] = None,
        index_std: Optional[float] = None,
        seed=0,
        checkpoint: bool = True,
    ):
        super().__init__(seed=seed, checkpoint=checkpoint)
        if draw not in DRAWS:
            raise UsageError(f"alignprop: unknown draw {draw!r}; choose step (the authors' script) or call")
        dist, std = _index_form(dist, mean, std, index_mean, index_std)
        if dist not in ("uniform", "gaussian"):
            raise UsageError(f"alignprop: unknown dist {dist!r}; choose uniform or gaussian")
        if dist == "gaussian" and mean is None and index_mean is None:
            raise UsageError("alignprop: dist=gaussian needs mean= (K) or index_mean= (the truncation index)")
        if dist == "gaussian" and draw == "step":
            raise UsageError("alignprop: dist=gaussian draws K once per call: use it with draw=call")
        self.draw, self.dist, self.mean, self.std = draw, dist, mean, float(std)
        self.index_mean, self.index_std = index_mean, index_std
        low, high = (whole_number(self.name, key, value, allow=(None,)) for key, value in (("low", low), ("high", high)))
        self.low = (0 if draw == "step" else 1) if low is None else low
        self.high = high

    def params(self) -> dict:
        p: dict = {} if self.draw == "step" else {"draw": "call"}
        if self.index_mean is not None:
            return {**p, "index_mean": self.index_mean, "index_std": self.std}
        if self.dist == "gaussian":
            return {**p, "dist": "gaussian", "mean": self.mean, "std": self.std}
        if self.low != (0 if self.draw == "step" else 1):
            p["low"] = self.low
        if self.high is not None:
            p["high"] = self.high
        return p

    def draw_k(self, steps: int) -> int:
        """``draw=call``: the number of final steps whose graph is kept in one call."""
        if self.dist == "gaussian":
            mean = self.mean if self.index_mean is None else steps - self.index_mean
            z = float(torch.randn((), generator=self._generator))
            return min(max(round(mean + self.std * z), 1), steps)
        high = steps if self.high is None else int(self.high)
        self._check_k(self.low, steps)
        self._check_k(high, steps)
        if self.low > high:
            raise UsageError(f"alignprop: low={self.low} is greater than high={high}")
        return self._randint(self.low, high)

    def _step_modes(self, steps: int) -> tuple[Mode, ...]:
        high = steps if self.high is None else int(self.high)
        for name, value in (("low", self.low), ("high", high)):
            if not 0 <= value <= steps:
                raise UsageError(f"alignprop: {name}={value} is out of range 0..{steps} for {steps} steps")
        if self.low > high:
            raise UsageError(f"alignprop: low={self.low} is greater than high={high}")
        draws = torch.randint(self.low, high + 1, (steps,), generator=self._generator).tolist()
        return tuple(self.grad_mode if t <= i else Mode.DETACH for i, t in enumerate(draws))

    def plan(self, steps: int) -> Plan:
        if self.draw == "step":
            return Plan(self._step_modes(steps))
        k = self.draw_k(steps)
        return Plan((Mode.DETACH,) * (steps - k) + (self.grad_mode,) * k)


def _index_form(dist: str, mean, std, index_mean, index_std) -> tuple[str, float]:
    """``dist`` and ``std`` once the repository's truncation-index options are read."""
    if index_mean is None:
        if index_std is not None:
            raise UsageError("alignprop: index_std= goes with index_mean= (the truncation index)")
        return dist, 1.0 if std is None else std
    if mean is not None:
        raise UsageError("alignprop: give mean= (K, the kept final steps) or index_mean= (the truncation index), not both")
    if std is not None and index_std is not None:
        raise UsageError("alignprop: give std= or index_std= (the same spread), not both")
    spread = index_std if index_std is not None else std
    return "gaussian", 1.0 if spread is None else spread
