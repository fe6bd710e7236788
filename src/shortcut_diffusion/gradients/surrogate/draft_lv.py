"""DRaFT-LV: the gradient through the last step only, averaged over re-noised copies of it.

Clark, Vicol, Swersky, Fleet, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards",
ICLR 2024 (arXiv 2309.17400), the low-variance K = 1 estimator. After a rollout without a graph,
the final sample is re-noised ``n`` times to the noise level of the last step with fresh noise
and each copy denoised with one differentiated step; the reward gradients are averaged.

- The base term is the real last step (``base=1``, as FlowBP's re-implementation averages it in):
  FlowBP-Sparse with the active set ``{N-1}``, value the real sample.
- Flow models: ``x^m = (1 - t) sg(x_N) + t eps_m``, ``x0^m = x^m - t v(x^m)`` at the last step's
  ``t``; DDIM: ``x^m = sqrt(abar) sg(x_0) + sqrt(1 - abar) eps_m``, ``x0^m`` the predicted x0.

The sample keeps the value of the real sample (the interface scores one image per row), so every
term's Jacobian meets the reward gradient at that sample rather than at its own ``x0^m``, which
differs from it by the last step's re-noise (an approximation of the paper, where each copy is
scored). ``n=2`` (FlowBP's and, as we recall, the paper's value). The noise comes from the
method's own seeded stream.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan
from shortcut_diffusion.gradients.plans.base import whole_number
from shortcut_diffusion.gradients.surrogate.base import SurrogateMethod
from shortcut_diffusion.gradients.surrogate.chain import Chain, st


class DRaFTLV(SurrogateMethod):
    name = "draft-lv"
    paper = "DRaFT-LV, arXiv 2309.17400"
    defaults = {"n": 2, "base": 1}

    def __init__(self, n: int = 2, base: int = 1, seed=0):
        super().__init__(seed)
        self.n = whole_number(self.name, "n", n)
        self.base = int(whole_number(self.name, "base", base))
        if self.n < 0 or self.base not in (0, 1) or self.n + self.base < 1:
            raise UsageError(f"{self.name}: need n >= 0 re-noised copies and base 0 or 1, at least one term "
                             f"(got n={n}, base={base})")

    def draw(self, n: int) -> int:
        return int(torch.randint(2**62, (1,), generator=self.generator))

    def active(self, drawn: Any) -> tuple[int, ...]:
        return (-1,) * (self.n + self.base)  # network graphs held: all at the last step

    def plan_of(self, drawn: Any, n: int) -> Plan:
        return Plan((Mode.DETACH,) * (n - 1) + (Mode.GRAD,))

    def build(self, chain: Chain, drawn: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        n, last = chain.n, chain.n - 1
        terms = []
        if self.base:
            terms.append(chain.u(last) + (chain.s[n] - chain.s[last]) * chain.net(chain.xs[last], last))
        clean = chain.xs[n]
        abar = 1.0 / (1.0 + chain.s[last] ** 2)  # the last step's level (flow: its t via c = 1)
        noise = torch.Generator().manual_seed(drawn)
        for _ in range(self.n):
            eps = torch.randn(clean.shape, generator=noise, dtype=clean.dtype).to(clean.device)
            x_m = _renoise(chain, clean, eps, last, abar)
            terms.append(chain.c[last] * x_m + (chain.s[n] - chain.s[last]) * chain.net(x_m, last))
        mean = sum(terms) / len(terms)
        return chain.x(st(chain.u(n), mean), n), None


def _renoise(chain: Chain, clean: torch.Tensor, eps: torch.Tensor, i: int, abar: float) -> torch.Tensor:
    """The clean sample noised to step ``i``'s level with ``eps`` (sampler scale)."""
    if chain.c[i] == 1.0:  # flow matching: x_t = (1 - t) x0 + t eps
        return (1 - chain.s[i]) * clean + chain.s[i] * eps
    return abar ** 0.5 * clean + (1 - abar) ** 0.5 * eps

