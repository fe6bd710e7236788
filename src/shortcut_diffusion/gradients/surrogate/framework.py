"""FlowBP's surrogate trajectory: one builder whose settings are ReFL, DRTune, LeapAlign and FlowBP.

Wang et al., "FlowBP" (arXiv 2606.11075) writes the reward-backpropagation methods of flow models
as settings of one surrogate built on a cached rollout:

    S = u_a + sum_i w_i vt_i,   vt_i = v_i (cached) or the network re-run at step i (active),

along four axes: the **active set** (which steps are re-run with their graph, on detached
inputs, gradient times ``gamma``), the **integration weights** ``w_i`` (Euler steps over every
step, one "leap" of a single velocity over a whole interval, or Lagrange quadrature), the **bridge
coupling** (a split point ``j`` where the surrogate is reconnected to the cached state and the
network input at ``j`` carries the earlier segment's gradient scaled by ``alpha``) and the
**reward input** (the sampled endpoint through the connector, forward value the real sample, or
the posterior mean at one step).

A :class:`Setting` is one point of that space; :func:`build` computes it. ``tests/test_surrogate_methods.py``
checks, in float64, that its settings give exactly the gradients of ReFL and DRTune (per-step plans
of the one sampling loop), of LeapAlign (:mod:`.leapalign`) and of SDO for the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from shortcut_diffusion.gradients.surrogate.chain import Chain, similarity_weight, st


@dataclass(frozen=True)
class Segment:
    """``u_end = u_start + sum w v_i`` over ``terms`` (``end=None``: to ``s = 0``, the posterior mean)."""

    start: int
    end: Optional[int]
    terms: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Setting:
    segments: tuple[Segment, ...]
    """One segment, or two joined at a bridge (the second starts where the first ends)."""
    active: dict = field(default_factory=dict)
    """Active step -> its gradient factor ``gamma``."""
    alpha: float = 1.0
    """Bridge coupling: the network input at the split carries the first segment's gradient times alpha."""
    connect: bool = True
    """Reward input: the sampled endpoint through the connector (True) or the last segment's value."""
    tau: Optional[float] = None
    """Trajectory-similarity weighting with floor ``tau`` (None: every row weighs 1)."""

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(sorted(self.active))


def euler(chain_s: list[float], a: int, m: int) -> tuple[tuple[int, float], ...]:
    """Euler weights: every step of ``a .. m - 1`` over its own interval."""
    return tuple((i, chain_s[i + 1] - chain_s[i]) for i in range(a, m))


def leap(chain_s: list[float], a: int, m: Optional[int]) -> tuple[tuple[int, float], ...]:
    """One velocity (step ``a``'s) over the whole interval to ``m`` (``None``: to ``s = 0``)."""
    return ((a, (0.0 if m is None else chain_s[m]) - chain_s[a]),)


def lagrange(chain_s: list[float], a: int, m: int, order: int, uniform: bool = False) -> tuple[tuple[int, float], ...]:
    """Quadrature of the velocity over ``[s_a, s_m]`` on ``order`` supports spread evenly over
    ``a .. m - 1`` (the first is ``a``): the integrals of their Lagrange basis polynomials, or the
    interval split evenly between them (``uniform``)."""
    support = sorted({int(round(v)) for v in np.linspace(a, m - 1, order)})
    if uniform or len(support) == 1:  # one support: its constant basis integrates to the interval
        return tuple((i, (chain_s[m] - chain_s[a]) / len(support)) for i in support)
    nodes = np.array([chain_s[i] for i in support], dtype=np.float64)
    terms = []
    for q, i in enumerate(support):
        others = np.delete(nodes, q)
        basis = np.polynomial.Polynomial.fromroots(others) / np.prod(nodes[q] - others)
        integral = basis.integ()
        terms.append((i, float(integral(chain_s[m]) - integral(chain_s[a]))))
    return tuple(terms)


def grad_rescale(setting_terms: list[tuple[int, float]], active: set[int], rho: float) -> float:
    """FlowBP's gradient factor ``1 + rho (sum |w| / sum_active |w| - 1)`` (rho 1: total over active)."""
    total = sum(abs(w) for _, w in setting_terms)
    kept = sum(abs(w) for i, w in setting_terms if i in active)
    return 1.0 + rho * (total / kept - 1.0) if kept > 0 else 1.0


def build(chain: Chain, setting: Setting) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The surrogate's output (sampler scale) and its per-row loss weight (or None)."""
    first = setting.segments[0]
    u, inputs, gaps = chain.u(first.start), {}, []
    for n, seg in enumerate(setting.segments):
        if n:  # the bridge at seg.start: reconnect to the cached state, couple the input by alpha
            j = seg.start
            gaps.append(chain.distance(u, j))
            u = st(chain.u(j), u)
            inputs[j] = setting.alpha * u + (1 - setting.alpha) * u.detach() if setting.alpha > 0 else u.detach()
        velocities = {i: _velocity(chain, setting, inputs, i) for i, _ in seg.terms}
        u = u + sum(w * velocities[i] for i, w in seg.terms)
    last = setting.segments[-1].end
    if not setting.connect:
        return chain.x(u, last), None
    gaps.append(chain.distance(u, chain.n))
    out = chain.x(st(chain.u(chain.n), u), chain.n)
    if setting.tau is None:
        return out, None
    return out, similarity_weight(gaps[0], gaps[-1], setting.tau) if len(gaps) > 1 else None


def _velocity(chain: Chain, setting: Setting, inputs: dict, i: int) -> torch.Tensor:
    """Step ``i``'s network output: cached, or re-run with its graph on the detached cached state
    (the bridge's coupled input at the split)."""
    if i not in setting.active:
        return chain.vs[i]
    x_in = chain.x(inputs[i], i) if i in inputs else chain.xs[i]
    return chain.net(x_in, i, setting.active[i])
