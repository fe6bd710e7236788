"""LeapAlign: two one-step leaps through a full rollout, joined by latent connectors.

Liang et al., "LeapAlign", CVPR 2026 (arXiv 2604.15311). After a full rollout without a graph,
two steps ``k < j`` (generation order: k noisier) are drawn, every unordered pair equally likely.
Leap 1 goes from ``x_k`` to ``x_j`` with the one velocity ``v_k`` (input ``x_k`` detached); a latent
connector gives it the value of the real ``x_j``. Leap 2 is the posterior mean at ``j``, built on
that connector, and a second connector gives it the value of the real sample: the reward scores
the real image, the gradient flows along the leaps only.

- **Gradient discounting** (``alpha``): the network input at ``j`` carries the leap-1 gradient
  times alpha (its value unchanged), so the nested term ``alpha t_j J_v(x_j)`` is scaled, not
  cut; ``alpha=0`` stops it (DRTune's input stop-gradient), ``alpha=1`` keeps it whole.
- **Trajectory-similarity weighting** (``tau``): each row's loss is weighted by
  ``1 / (max(d_j, tau) + max(d_0, tau))``, ``d`` the mean absolute gap between a leap's end and the
  real state (reported as ``info["loss_weight"]``; ``tau=0`` turns it off).

Defaults ``alpha=0.3``, ``tau=0.1``: FlowBP's LeapAlign configs (arXiv 2606.11075), the best public
evidence of the paper's values. On DDIM the leaps are DDIM steps of one noise prediction (our
extension; the paper is on flow models). In FlowBP's space LeapAlign is the setting with the
endpoint as reward input, active set ``{k, j}``, leap weights and a bridge at ``j``
(``tests/test_surrogate_methods.py`` checks the equality).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from shortcut_diffusion.gradients.surrogate.base import SurrogateMethod, number, pair
from shortcut_diffusion.gradients.surrogate.chain import Chain, similarity_weight, st


class LeapAlign(SurrogateMethod):
    name = "leapalign"
    paper = "LeapAlign, arXiv 2604.15311"
    min_steps = 2
    defaults = {"alpha": 0.3, "tau": 0.1}

    def __init__(self, alpha: float = 0.3, tau: float = 0.1, seed=0):
        super().__init__(seed)
        self.alpha = number(self.name, "alpha", alpha, 0.0, 1.0)
        self.tau = number(self.name, "tau", tau, 0.0)

    def draw(self, n: int) -> tuple[int, int]:
        return pair(n, self.generator)

    def active(self, drawn: tuple[int, int]) -> tuple[int, int]:
        return drawn

    def build(self, chain: Chain, drawn: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return leap_align(chain, *drawn, alpha=self.alpha, tau=self.tau)


def leap_align(chain: Chain, k: int, j: int, *, alpha: float, tau: float
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """LeapAlign's output (value: the real sample) and its per-row weight (None with ``tau=0``)."""
    n = chain.n
    u_j_hat = chain.u(k) + (chain.s[j] - chain.s[k]) * chain.net(chain.xs[k], k)  # leap 1
    d_j = chain.distance(u_j_hat, j)
    u_j = st(chain.u(j), u_j_hat)  # connector: the real x_j
    x_in = chain.x(alpha * u_j + (1 - alpha) * u_j.detach() if alpha > 0 else u_j.detach(), j)
    u_0_hat = u_j + (chain.s[n] - chain.s[j]) * chain.net(x_in, j)  # leap 2 (to s = 0 on flow models)
    d_0 = chain.distance(u_0_hat, n)
    out = chain.x(st(chain.u(n), u_0_hat), n)  # connector: the real sample
    return out, similarity_weight(d_j, d_0, tau) if tau > 0 else None
