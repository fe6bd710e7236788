"""Direct-Align (the method of SRPO): one differentiable step from a clean sample noised with a known noise.

Shen et al., "Directly Aligning the Full Diffusion Trajectory with Fine-Grained Human Preference"
(SRPO), arXiv 2509.06942. A clean sample ``x0`` is noised to the level of step ``i`` with a known
noise ``eps``, the network takes one differentiable step to step ``i + 1``, and the image is
recovered by interpolation with the same known noise:

    flow:  x_i = (1 - s_i) x0 + s_i eps,  x_{i+1} = x_i + (s_{i+1} - s_i) v,
           x0_rec = (x_{i+1} - s_{i+1} eps) / (1 - s_{i+1});
    DDIM:  the same in ``u = x / sqrt(abar)``: ``u_i = x0 + s_i eps``, ``x0_rec = u_{i+1} - s_{i+1} eps``.

``x0_rec`` equals ``x0`` exactly when the network predicts the true velocity (noise); the reward's
gradient reaches the network at step ``i`` through one call, with a gain ``(s_{i+1} - s_i) /
(1 - s_{i+1})`` that is large at high noise. The sample scored is ``x0_rec`` (as in the official code).

- ``source=rollout`` (default): ``x0`` is a rollout without a graph from the starting noise, and
  ``eps`` that starting noise (as the official code reuses its initial noise).
- ``source=data``: ``x0`` is a real training digit of each row's class (the digits testbeds, whose
  latents are their 8x8 images; SRPO's training from real images) and ``eps`` the starting noise.
- ``first=0.1, last=0.5``: the step ``i`` is drawn uniformly among the steps of that fraction of the
  schedule (the official code trains on positions 5..25 of a 50-step shifted schedule, i.e. early to
  middle noise; it warns that the noisiest levels distort structure and late ones hack colour). The
  official code draws within that range on a 1000-level interpolation with a step of a tenth of
  the range; here the step is one step of the sampling grid.

Not done: the inversion branch (the step taken upward from ``s_{i+1}`` to ``s_i``, scored with the
prompts swapped, the paper's regulariser). SRPO's relative reward is a reward combinator,
``--reward "relative:SPEC,negative=..."`` (:mod:`shortcut_diffusion.rewards.relative`). In latent
optimization the gradient reaches the starting noise through ``eps`` only (a diagnostic: the
published method trains weights).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.gradients.base import Sampling
from shortcut_diffusion.gradients.surrogate.base import SurrogateMethod, choice, number
from shortcut_diffusion.gradients.surrogate.chain import Chain

SOURCES = ("rollout", "data")


class DirectAlign(SurrogateMethod):
    name = "direct-align"
    paper = "SRPO (Direct-Align), arXiv 2509.06942"
    defaults = {"first": 0.1, "last": 0.5, "source": "rollout"}

    def __init__(self, first: float = 0.1, last: float = 0.5, source: str = "rollout", seed=0):
        super().__init__(seed)
        self.first = number(self.name, "first", first, 0.0, 1.0)
        self.last = number(self.name, "last", last, 0.0, 1.0)
        self.source = choice(self.name, "source", source, SOURCES)
        if self.first > self.last:
            raise UsageError(f"{self.name}: first={first} must not be after last={last} (fractions of the schedule)")

    def draw(self, n: int) -> int:
        lo = min(int(self.first * n), n - 1)
        hi = max(lo + 1, min(int(round(self.last * n)), n))
        return int(torch.randint(lo, hi, (1,), generator=self.generator))

    def active(self, drawn: Any) -> tuple[int, ...]:
        return (drawn,)

    def cache(self, sampling: Sampling, x: torch.Tensor) -> Chain:
        if self.source == "rollout":
            return Chain.roll(sampling, x)
        clean = training_digits(sampling.labels, x, self.generator)
        chain = Chain.on_grid(sampling, x, [], [], rolled=False)
        eps = x.detach()  # the known-noise path through the data: every state and output exact
        chain.xs = [(signal(chain, i) * clean + s * eps) / chain.c[i] for i, s in enumerate(chain.s)]
        chain.vs = [eps - clean if chain.c[i] == 1.0 else eps for i in range(len(chain.s) - 1)]
        return chain

    def build(self, chain: Chain, drawn: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return recover(chain, chain.xs[chain.n].detach(), chain.z, drawn), None


def signal(chain: Chain, i: int) -> float:
    """What the clean sample is multiplied by in the Euler coordinates of step ``i``."""
    return 1.0 - chain.s[i] if chain.c[i] == 1.0 else 1.0


def recover(chain: Chain, clean: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
    """Direct-Align's ``x0_rec``: ``clean`` noised with ``eps`` to step ``i``, one step, and the
    known noise taken back out at step ``i + 1``."""
    u = signal(chain, i) * clean + chain.s[i] * eps
    u_next = u + (chain.s[i + 1] - chain.s[i]) * chain.net(chain.x(u, i), i)
    return (u_next - chain.s[i + 1] * eps) / signal(chain, i + 1)


def training_digits(labels: Any, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random training digit of each row's class, as a latent like ``x`` (the digits testbeds)."""
    from shortcut_diffusion.models.testbed.data import load

    data = load("train")
    if labels is None or len(labels) != len(x) or any(isinstance(v, str) for v in labels):
        raise UsageError("direct-align source=data draws training digits of each sample's class: it needs class "
                         "conditions (--cond) on a digits testbed")
    if tuple(x.shape[1:]) != tuple(data.images.shape[1:]):
        raise UsageError(f"direct-align source=data needs the digits testbed (latents {tuple(data.images.shape[1:])}), "
                         f"not latents of shape {tuple(x.shape[1:])}")
    rows = []
    for label in labels:
        pool = torch.nonzero(data.labels == int(label)).flatten()
        if not len(pool):
            raise UsageError(f"direct-align source=data: no training digit of class {label!r}")
        rows.append(data.images[pool[int(torch.randint(len(pool), (1,), generator=generator))]])
    return torch.stack(rows).to(x.device, x.dtype)
