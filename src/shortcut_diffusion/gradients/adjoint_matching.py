"""Adjoint Matching: reward fine-tuning as stochastic optimal control, with its own regression loss.

Domingo-Enrich, Drozdzal, Karrer, Chen, "Adjoint Matching: Fine-tuning Flow and Diffusion
Generative Models with Memoryless Stochastic Optimal Control", ICLR 2025 (arXiv 2409.08861).

This is not reward backpropagation through the sampler. Each fine-tuning step:

1. samples with the current fine-tuned model along the memoryless chain (:mod:`.memoryless`),
   without a graph, and scores the final sample;
2. solves the lean adjoint backward from ``a_N = -lambda grad r(x_N)`` with the base model's
   step Jacobians (one VJP per step, no graph through the chain);
3. regresses the fine-tuned model's control onto it: at every step ``k`` of a subset ``S``,

       L_k = || (m_theta(x_k) - m_base(x_k)) / std_k + std_k a_{k+1} ||^2 / h_k,   clipped at clip * lambda^2,

   with ``m`` the step's mean and ``std_k`` its noise. In the limit of small steps ``L_k`` is the
   paper's ``|| u_theta + sigma a ||^2`` with the control ``u = (b_theta - b_base) / sigma``. We use
   ``a_{k+1}`` (the adjoint after the step), for which the loss is exactly zero at the optimum of a
   chain with linear base and reward (``tests/test_adjoint_matching.py``); at ``theta = base`` the
   loss's gradient is ``2 / h`` times the gradient of ``-lambda r`` through the chain with the
   noises fixed (also a test).

The method returns the loss through :meth:`GradientMethod.training_loss` (fine-tuning only).
Defaults as in a public reproduction of the paper (its Appendix G), unverified against the paper:
``lam=12500`` (there for ImageReward; the right value depends on the reward's scale), ``clip=1.6``
(``L_k`` clipped at ``1.6 lambda^2``), ``k=0`` here meaning every step with noise (the
reproduction: 40 steps, the last 10 plus 10 drawn from the first 30; ``k=20`` draws half the
subset from the last quarter and half from the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan, SampleOutput
from shortcut_diffusion.gradients.base import GradientMethod, Sampling
from shortcut_diffusion.gradients.memoryless import (MemorylessChain, check_memoryless, lean_adjoint,
                                                     step_noises)
from shortcut_diffusion.gradients.plans.base import whole_number
from shortcut_diffusion.gradients.surrogate.base import number


@dataclass
class Rollout:
    """One memoryless rollout of the fine-tuned model: what its loss is built from."""

    chain: MemorylessChain
    xs: list[torch.Tensor]
    final: torch.Tensor
    """The final sample, a leaf that requires grad: the reward's gradient is taken with respect to it."""
    subset: Sequence[int]
    denoiser: Callable
    cond: Any


class AdjointMatching(GradientMethod):
    name = "adjoint-matching"
    paper = "Adjoint Matching, arXiv 2409.08861"
    noise_prior = False
    defaults = {"lam": 12500.0, "clip": 1.6, "k": 0}

    def __init__(self, lam: float = 12500.0, clip: float = 1.6, k: int = 0, seed: Optional[int] = 0):
        self.lam = number(self.name, "lam", lam, 0.0)
        self.clip = number(self.name, "clip", clip, 0.0)
        self.k = whole_number(self.name, "k", k)
        self.seed = whole_number(self.name, "seed", seed, allow=(None,))
        self.generator = torch.Generator()
        self.generator.manual_seed(0 if seed is None else int(seed))
        if self.lam == 0:
            raise UsageError(f"{self.name}: lam must be > 0 (the reward's weight in the target p_base exp(lam r))")

    def params(self) -> dict:
        return {k: getattr(self, k) for k, v in self.defaults.items() if getattr(self, k) != v}

    def reseed(self, seed: int) -> "AdjointMatching":
        self.generator.manual_seed(int(seed))
        return self

    def rows(self, seeds: Sequence[int], steps: int) -> "AdjointMatching":
        """Fine-tuning: the subset of steps drawn from the micro-batch's first seed (reproducible)."""
        return self.reseed(seeds[0]) if seeds else self

    def check_task(self, task: str) -> None:
        if not task.startswith("finetune"):
            raise UsageError(f"--estimator {self.name} is a fine-tuning loss (a regression of the model's control "
                             "onto the lean adjoint), not a gradient of the reward through sampling: use it with "
                             "sdo finetune --target lora or full")
        if task.endswith(":embedding"):
            raise UsageError(f"--estimator {self.name} regresses the network's output onto its base output: "
                             "fine-tune --target lora or full")

    def check(self, scheduler: Any, steps: int, *, start: int = 0, step_kwargs: Optional[dict] = None,
              task: str = "latent") -> None:
        self.check_task(task)
        check_memoryless(self.name, scheduler)
        if start:
            raise UsageError(f"--estimator {self.name} samples the whole memoryless chain: no warm-up")
        if any(step_kwargs or {}):
            raise UsageError(f"--estimator {self.name} samples its own memoryless chain: it takes no step "
                             f"arguments (got {', '.join(step_kwargs)})")
        if steps < 2:
            raise UsageError(f"--estimator {self.name} needs at least 2 steps (the last has no noise)")

    def held_graphs(self, steps: int) -> int:
        return max(1, min(self.k or steps - 1, steps - 1))

    def moves_start(self, steps: int) -> bool:
        return False

    def subset(self, n: int) -> list[int]:
        """The steps whose loss is taken: every step with noise, or ``k`` of them (half the last
        quarter, half drawn from the rest, as the reproduction's 10 + 10 of 40)."""
        noisy = n - 1  # the last step lands on the data without noise
        if not self.k or self.k >= noisy:
            return list(range(noisy))
        late_start = max(noisy - max(noisy // 4, 1), 0)
        late = list(range(late_start, noisy))[-(self.k - self.k // 2):]
        early = [i for i in range(noisy) if i not in late]
        picks = torch.randperm(len(early), generator=self.generator)[: self.k - len(late)].tolist()
        return sorted(late + [early[i] for i in picks])

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        if not torch.is_grad_enabled():
            return self.plain(sampling, x)
        chain = MemorylessChain.of(sampling, x.device)
        generator = sampling.generator if isinstance(sampling.generator, (int, torch.Generator)) else self.generator
        noises = step_noises(chain, x, generator)
        with torch.no_grad():
            xs = chain.roll(sampling.denoiser, sampling.cond, x.detach(), noises)
        final = xs[-1].detach().clone().requires_grad_(True)
        subset = self.subset(chain.n)
        plan = Plan(tuple(Mode.GRAD if k in subset else Mode.DETACH for k in range(chain.n)))
        rollout = Rollout(chain, xs, final, subset, sampling.denoiser, sampling.cond)
        info = {"forward": chain.n, "backward": chain.n + len(subset), "adjoint_matching": rollout}
        return SampleOutput(final, plan, info=info)

    def training_loss(self, out: Any, rewards: torch.Tensor, base: Optional[Callable[[], Any]] = None
                      ) -> torch.Tensor:
        rollout: Optional[Rollout] = out.info.get("adjoint_matching")
        if rollout is None or base is None:
            raise UsageError(f"--estimator {self.name} needs its own rollout and the base network: use it with "
                             "sdo finetune")
        if not rewards.requires_grad:
            raise UsageError(f"--estimator {self.name} needs a differentiable reward")
        (grad,) = torch.autograd.grad(rewards.sum(), rollout.final)
        return matching_loss(rollout, -self.lam * grad.detach(), base, self.clip * self.lam ** 2)


def matching_loss(rollout: Rollout, last: torch.Tensor, base: Callable[[], Any], limit: float) -> torch.Tensor:
    """Per row: the adjoint-matching loss of ``rollout`` given the final adjoint ``last``, each
    step's term clipped at ``limit`` (0: no clipping)."""
    chain, xs = rollout.chain, rollout.xs
    with base() as denoiser:
        adjoints, base_means = lean_adjoint(chain, denoiser, rollout.cond, xs, last)
    total: Any = 0
    for k in rollout.subset:
        std = chain.std(k)
        tuned = chain.mean(rollout.denoiser, rollout.cond, xs[k], k)
        residual = (tuned - base_means[k]) / std + std * adjoints[k + 1]
        term = residual.flatten(1).square().sum(1) / chain.h[k]
        total = total + (term.clamp(max=limit) if limit else term)
    return total
