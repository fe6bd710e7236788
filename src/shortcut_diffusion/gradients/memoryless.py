"""The memoryless chain of Adjoint Matching, and the lean adjoint solved backward along it.

Adjoint Matching (Domingo-Enrich et al., arXiv 2409.08861) fine-tunes against a reward as a
stochastic optimal control problem. That needs a sampler whose final sample is independent of its
starting noise (the "memoryless" noise schedule), so that the tilted distribution
``p_base(x) exp(lambda r(x))`` is the optimum.

A state of level ``k`` is ``x = alpha_k x0 + beta_k eps``: flow matching has ``alpha = 1 - t``,
``beta = t`` (``t`` the scheduler's sigma), diffusion ``alpha = sqrt(abar)``, ``beta = sqrt(1 - abar)``
on the DDIM grid of the model's schedule. From the network's ``(x0_hat, eps_hat)`` one step goes
to ``x' = m + std z`` with

    m = alpha' x0_hat + sqrt(beta'^2 - std^2) eps_hat,   std^2 = beta'^2 (1 - (alpha beta' / (alpha' beta))^2),

the posterior of the forward process given the predicted ``x0`` (DDIM with eta 1, i.e. DDPM: the
memoryless member of the DDIM family). On diffusion models this is the paper's DDPM chain. On flow
models it is our discretisation of the memoryless flow SDE (its noise tends to
``sigma(t)^2 = 2 t / (1 - t)`` as the steps shrink), the same ancestral step on the flow's
interpolant: it is finite at ``t = 1`` (where it draws fresh noise) and needs no offset there (a
public reproduction offsets ``sigma`` instead). Like DDPM it is first order: its samples approach
the model's distribution as the steps shrink. The last step has ``std = 0`` (it lands on the data).

The lean adjoint is the vector-Jacobian product of the base model's step means, backward from
``-lambda grad r`` at the final sample: ``a_k = (d m_base(x_k) / d x_k)^T a_{k+1}``, one network
VJP per step and no graph kept through the chain. With the noises held fixed and the fine-tuned
model equal to the base, ``a_k`` is exactly the gradient of ``-lambda r(x_N)`` with respect to
``x_k`` (``tests/test_adjoint_matching.py`` checks it against autograd in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from shortcut_diffusion.gradients.base import Sampling
from shortcut_diffusion.sampling.schedulers import (ddim_steps, eps_from, fresh_scheduler, is_flow_matching,
                                                    prediction_type)


@dataclass
class MemorylessChain:
    """The levels, timesteps and step lengths of one memoryless chain of ``n`` steps."""

    kind: str
    """``flow`` or the diffusion model's prediction type (``epsilon``, ``v_prediction``)."""
    alphas: list[float]
    betas: list[float]
    ts: list[torch.Tensor]
    """The network timestep of each step."""
    h: list[float]
    """Each step's length in the model's time in [0, 1] (what the loss of a step is divided by)."""

    @classmethod
    def of(cls, sampling: Sampling, device: Any = None) -> "MemorylessChain":
        kwargs = sampling.set_timesteps_kwargs or {}
        if is_flow_matching(sampling.scheduler):
            sched = fresh_scheduler(sampling.scheduler, sampling.steps, device=device, **kwargs)
            t = [float(v) for v in sched.sigmas]
            return cls("flow", [1 - v for v in t], t, list(sched.timesteps), [a - b for a, b in zip(t, t[1:])])
        steps = ddim_steps(sampling.scheduler, sampling.steps, device=device, what="--estimator adjoint-matching",
                           **kwargs)
        abar = [s.abar for s in steps] + [steps[-1].abar_prev]
        return cls(prediction_type(sampling.scheduler), [a ** 0.5 for a in abar], [(1 - a) ** 0.5 for a in abar],
                   [s.t for s in steps], [1.0 / len(steps)] * len(steps))

    @property
    def n(self) -> int:
        return len(self.ts)

    def std(self, k: int) -> float:
        """The noise of step ``k`` (0 on the last step)."""
        a, b, a2, b2 = self.alphas[k], self.betas[k], self.alphas[k + 1], self.betas[k + 1]
        if b2 <= 0 or b <= 0:
            return 0.0
        return b2 * max(1 - (a * b2 / (a2 * b)) ** 2, 0.0) ** 0.5

    def denoised(self, output: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` of the network output at state ``x`` of level ``k``."""
        a, b = self.alphas[k], self.betas[k]
        if self.kind == "flow":
            return x - b * output, x + a * output
        eps = eps_from(output, x, a * a, self.kind)
        return (x - b * eps) / a, eps

    def mean(self, denoiser: Callable, cond: Any, x: torch.Tensor, k: int) -> torch.Tensor:
        """The mean of step ``k`` from ``x`` under ``denoiser`` (with whatever graph grad mode records).
        The states are variance-preserving (flow: the interpolant), what DDIM and flow networks take."""
        x0, eps = self.denoised(denoiser(x, self.ts[k], cond), x, k)
        std = self.std(k)
        return self.alphas[k + 1] * x0 + max(self.betas[k + 1] ** 2 - std ** 2, 0.0) ** 0.5 * eps

    def roll(self, denoiser: Callable, cond: Any, x: torch.Tensor, noises: list[torch.Tensor]) -> list[torch.Tensor]:
        """The states ``x_0 .. x_n`` from ``x`` with the step noises ``noises`` (graph as grad mode says)."""
        xs = [x]
        for k in range(self.n):
            x = self.mean(denoiser, cond, x, k) + self.std(k) * noises[k]
            xs.append(x)
        return xs


def step_noises(chain: MemorylessChain, x: torch.Tensor, generator: Any) -> list[torch.Tensor]:
    """The chain's step noises: ``generator`` an int seed gives step ``k`` the stream of ``(seed, k)``."""
    from shortcut_diffusion.sampling.loop import step_noise_generator

    noises = []
    for k in range(chain.n):
        gen = step_noise_generator(generator, k) if isinstance(generator, int) else generator
        noises.append(torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device))
    return noises


def lean_adjoint(chain: MemorylessChain, denoiser: Callable, cond: Any, xs: list[torch.Tensor],
                 last: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The lean adjoints ``a_0 .. a_n`` (``a_n = last``) along the states ``xs`` under ``denoiser``
    (the base model), and the base model's step means ``m_0 .. m_{n-1}`` (both detached)."""
    adjoints: list[torch.Tensor] = [last.detach()]
    means: list[torch.Tensor] = []
    for k in reversed(range(chain.n)):
        with torch.enable_grad():
            x = xs[k].detach().requires_grad_(True)
            m = chain.mean(denoiser, cond, x, k)
            (a,) = torch.autograd.grad(m, x, adjoints[0].to(m.dtype))
        adjoints.insert(0, a.detach())
        means.insert(0, m.detach())
    return adjoints, means


def check_memoryless(name: str, scheduler: Any) -> None:
    """Refuse, in one line, a schedule the memoryless chain cannot be built on."""
    if is_flow_matching(scheduler):
        return
    ddim_steps(scheduler, 2, what=f"--estimator {name}")  # epsilon or v prediction, no clipping
