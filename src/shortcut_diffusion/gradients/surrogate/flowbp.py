"""FlowBP's three variants: Sparse, Bridge and Lagrange surrogate trajectories.

Wang et al., "FlowBP" (arXiv 2606.11075); the builder and its axes are in :mod:`.framework`.
Defaults are those of the paper's final configs (its public code). Options of every variant:
``k`` (active steps), ``bias`` (active steps drawn with probability ``(i + 1) ** bias``, late
steps favoured), ``rho`` (the gradient of the active steps times ``1 + rho (total weight /
active weight - 1)``).

- ``flowbp-sparse`` (``k=3, bias=2, rho=1``): ``k`` active steps, Euler weights over the whole
  chain, no bridge. ``input=endpoint`` scores the real sample through the connector;
  ``input=mean`` the posterior mean at the last active step (``k=1`` is then ReFL's setting).
- ``flowbp-bridge`` (``k=5, bias=2, rho=1, alpha=0.1``): a split ``j`` (drawn as LeapAlign's
  pair, the later step), the ``k`` actives split before/after ``j`` in proportion to the
  segments' lengths (``j`` always active), and the network input at ``j`` coupled by ``alpha``.
  ``weights=leap`` puts each segment on one velocity (one active per segment: LeapAlign's
  weights); ``tau`` > 0 adds LeapAlign's similarity weighting.
- ``flowbp-lagrange`` (``order=3, alpha=0.1, tau=0.2, scale=0.25, rho=0.5``): ``(k, j)`` drawn from a
  Dirichlet split of the steps (concentrations 2.5, 6, 2 over the late, middle and early parts),
  segments ``[k, j)`` and ``[j, N)`` integrated by Lagrange quadrature on ``order`` supports
  (``weights=uniform``: the interval split evenly), the start of each segment active and its
  second support active with its gradient times ``scale``; similarity weighting with ``tau``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.gradients.plans.base import whole_number
from shortcut_diffusion.gradients.surrogate.base import SurrogateMethod, choice, late_biased, number, pair
from shortcut_diffusion.gradients.surrogate.chain import Chain
from shortcut_diffusion.gradients.surrogate.framework import (Segment, Setting, build, euler, grad_rescale, lagrange,
                                                              leap)


@dataclass(frozen=True)
class Drawn:
    """One call's draw: the active steps, and the pair ``k < j`` (bridge at ``j``) where there is one."""

    active: tuple[int, ...]
    k: Optional[int] = None
    j: Optional[int] = None


class FlowBP(SurrogateMethod):
    """The options every variant shares; each variant draws and lays out its own setting."""

    paper = "FlowBP, arXiv 2606.11075"

    def __init__(self, k: int, bias: float, rho: float, seed=0):
        super().__init__(seed)
        self.k = whole_number(self.name, "k", k)
        if self.k < 1:
            raise UsageError(f"{self.name}: k={k} must be at least 1")
        self.bias = number(self.name, "bias", bias, 0.0)
        self.rho = number(self.name, "rho", rho, 0.0, 1.0)

    def active(self, drawn: Drawn) -> tuple[int, ...]:
        return drawn.active

    def build(self, chain: Chain, drawn: Drawn) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return build(chain, self.setting(chain.s, drawn))

    def setting(self, s: list[float], drawn: Drawn) -> Setting:
        """The point of FlowBP's space this draw is, on a chain with times ``s``."""
        raise NotImplementedError

    def gammas(self, segments: tuple[Segment, ...], active: set[int], scale: Optional[dict] = None) -> dict:
        gamma = grad_rescale([term for seg in segments for term in seg.terms], active, self.rho)
        return {i: gamma * (scale or {}).get(i, 1.0) for i in sorted(active)}


class Sparse(FlowBP):
    name = "flowbp-sparse"
    defaults = {"k": 3, "bias": 2.0, "rho": 1.0, "input": "endpoint"}

    def __init__(self, k: int = 3, bias: float = 2.0, rho: float = 1.0, input: str = "endpoint", seed=0):
        super().__init__(k, bias, rho, seed)
        self.input = choice(self.name, "input", input, ("endpoint", "mean"))

    def draw(self, n: int) -> Drawn:
        return Drawn(tuple(late_biased(0, n, self.k, self.bias, self.generator)))

    def setting(self, s: list[float], drawn: Drawn) -> Setting:
        n, last = len(s) - 1, max(drawn.active)
        if self.input == "endpoint":
            segments = (Segment(0, n, euler(s, 0, n)),)
        else:  # the posterior mean at the last active step
            segments = (Segment(0, None, euler(s, 0, last) + leap(s, last, None)),)
        return Setting(segments, self.gammas(segments, set(drawn.active)), connect=self.input == "endpoint")


class Bridge(FlowBP):
    name = "flowbp-bridge"
    min_steps = 2
    defaults = {"k": 5, "bias": 2.0, "rho": 1.0, "alpha": 0.1, "weights": "euler", "tau": 0.0}

    def __init__(self, k: int = 5, bias: float = 2.0, rho: float = 1.0, alpha: float = 0.1, weights: str = "euler",
                 tau: float = 0.0, seed=0):
        super().__init__(k, bias, rho, seed)
        self.alpha = number(self.name, "alpha", alpha, 0.0, 1.0)
        self.weights = choice(self.name, "weights", weights, ("euler", "leap"))
        self.tau = number(self.name, "tau", tau, 0.0)
        if self.weights == "leap" and self.k != 2:
            raise UsageError(f"{self.name}: weights=leap puts each segment on one velocity: use k=2, not k={self.k}")
        if self.k < 2:
            raise UsageError(f"{self.name}: k={self.k} must be at least 2 (one active step on each side of the bridge)")

    def draw(self, n: int) -> Drawn:
        k, j = pair(n, self.generator)
        if self.weights == "leap":
            return Drawn((k, j), k, j)
        before = min(max(1, round(self.k * j / n)), j, self.k - 1)
        after = min(self.k - before, n - j)
        pre = late_biased(0, j, before, self.bias, self.generator)
        post = [j] + late_biased(j + 1, n, after - 1, self.bias, self.generator)
        return Drawn(tuple(sorted(pre + post)), k, j)

    def setting(self, s: list[float], drawn: Drawn) -> Setting:
        n, j = len(s) - 1, drawn.j
        if self.weights == "leap":
            segments = (Segment(drawn.k, j, leap(s, drawn.k, j)), Segment(j, n, leap(s, j, n)))
        else:
            segments = (Segment(0, j, euler(s, 0, j)), Segment(j, n, euler(s, j, n)))
        return Setting(segments, self.gammas(segments, set(drawn.active)), alpha=self.alpha,
                       tau=self.tau or None)


class Lagrange(FlowBP):
    name = "flowbp-lagrange"
    min_steps = 3
    defaults = {"order": 3, "alpha": 0.1, "tau": 0.2, "scale": 0.25, "rho": 0.5, "weights": "lagrange"}
    concentration = (2.5, 6.0, 2.0)
    """Dirichlet concentrations of the late, middle and early parts of the steps (FlowBP's flux1 config)."""

    def __init__(self, order: int = 3, alpha: float = 0.1, tau: float = 0.2, scale: float = 0.25, rho: float = 0.5,
                 weights: str = "lagrange", seed=0):
        super().__init__(2, 0.0, rho, seed)
        self.order = whole_number(self.name, "order", order)
        if self.order < 1:
            raise UsageError(f"{self.name}: order={order} must be at least 1")
        self.alpha = number(self.name, "alpha", alpha, 0.0, 1.0)
        self.tau = number(self.name, "tau", tau, 0.0)
        self.scale = number(self.name, "scale", scale, 0.0)
        self.weights = choice(self.name, "weights", weights, ("lagrange", "uniform"))

    def draw(self, n: int) -> Drawn:
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        props = np.random.default_rng(seed).dirichlet(self.concentration)
        lengths = [max(1, int(round(p * n))) for p in props]
        while sum(lengths) > n:
            lengths[max(range(3), key=lambda q: lengths[q])] -= 1
        while sum(lengths) < n:
            lengths[max(range(3), key=lambda q: props[q])] += 1
        j = n - 1 - lengths[0]
        k = j - lengths[1]
        return Drawn(tuple(sorted({k, j} | set(self.second(k, j, n)))), k, j)

    def second(self, k: int, j: int, n: int) -> list[int]:
        """The second support of each segment (active, its gradient times ``scale``)."""
        found = []
        for a, m in ((k, j), (j, n)):
            support = sorted({int(round(v)) for v in np.linspace(a, m - 1, self.order)})
            found += support[1:2]
        return found if self.scale > 0 else []

    def setting(self, s: list[float], drawn: Drawn) -> Setting:
        n, k, j = len(s) - 1, drawn.k, drawn.j
        uniform = self.weights == "uniform"
        segments = (Segment(k, j, lagrange(s, k, j, self.order, uniform)),
                    Segment(j, n, lagrange(s, j, n, self.order, uniform)))
        scale = {i: self.scale for i in self.second(k, j, n)}
        return Setting(segments, self.gammas(segments, set(drawn.active), scale), alpha=self.alpha,
                       tau=self.tau or None)
