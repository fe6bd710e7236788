"""A cached rollout in Euler coordinates: what every surrogate-trajectory method builds on.

The surrogate methods (LeapAlign, FlowBP, DRaFT-LV) sample once without a graph, keep the states
``x_0 .. x_N`` and network outputs ``v_0 .. v_{N-1}``, then build a short differentiable path from
the cache, re-running the network with its graph at a few chosen ("active") steps.

They are written for a chain that is Euler's method in some coordinates:

- flow matching (``FlowMatchEulerDiscreteScheduler``): ``x_{i+1} = x_i + (s_{i+1} - s_i) v_i``
  with ``s`` the scheduler's sigmas (``s = 1`` noise, ``s = 0`` data) and ``v`` the velocity;
- DDIM with eta 0 on an epsilon model: in ``u = x / sqrt(abar)`` with ``s = sqrt((1 - abar) / abar)``
  the same update holds with ``v = eps`` (DDIM is Euler's method there).

So a state is carried as ``u = c x`` (``c = 1`` for flow, ``1 / sqrt(abar)`` for DDIM); a leap of
one network output over an interval is ``u_m = u_a + (s_m - s_a) v``, and the posterior mean
("predicted x0") of step ``a`` is the leap to ``s = 0`` (where ``c = 1``).

:func:`st` is the connector: the value of the cached state, the gradient of the surrogate.
Where the optimized latent requires grad, the cached state at step ``i`` carries it along the
sampler's linear path (``d u_i / d u_0 = I`` in these coordinates, every cached output constant),
so latent targets get a gradient; an extension of the published methods, whose initial noise is a
constant (with weights as the target nothing changes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.gradients.base import Sampling
from shortcut_diffusion.sampling.loop import _RowsDenoiser, _rows
from shortcut_diffusion.sampling.schedulers import (check_linear_step, fresh_scheduler, is_flow_matching, scale_input,
                                                    step_levels)


def st(value_of: torch.Tensor, grad_of: torch.Tensor) -> torch.Tensor:
    """The connector: the value of ``value_of`` (a cached state) and the gradient of ``grad_of``."""
    return value_of.detach() + (grad_of - grad_of.detach())


def rescaled(v: torch.Tensor, gamma: float) -> torch.Tensor:
    """``v`` with its gradient multiplied by ``gamma`` (its value unchanged)."""
    return v if gamma == 1 else v.detach() + gamma * (v - v.detach())


def check_chain(name: str, scheduler: Any, steps: int, step_kwargs: Optional[dict] = None) -> None:
    """Refuse, in one line, a chain that is not Euler's method in the coordinates above."""
    check_linear_step(scheduler, step_kwargs, what=f"--estimator {name}")
    if not is_flow_matching(scheduler):  # flow grids need the model's shift (Flux: mu) and always fit
        _coordinates(fresh_scheduler(scheduler, steps), 0, steps)


def _coordinates(sched: Any, start: int, stop: int) -> tuple[list[float], list[float]]:
    """``(s, c)`` at the states ``start .. stop`` of a set scheduler."""
    if is_flow_matching(sched):
        s = [float(v) for v in sched.sigmas[start:stop + 1]]
        return s, [1.0] * len(s)
    pairs = step_levels(sched)
    if any(abs(after - before) > 1e-12 for (_, after), (before, _) in zip(pairs, pairs[1:])):
        raise UsageError("the surrogate methods need DDIM steps that land on the next step's timestep: use "
                         "timestep_spacing leading (each step goes to t - T // N)")
    levels = ([a for a, _ in pairs] + [pairs[-1][1]])[start:stop + 1]
    return [((1 - a) / a) ** 0.5 for a in levels], [a ** -0.5 for a in levels]


@dataclass
class Chain:
    """A cached rollout (``n`` steps) of one sampling call, and the network to re-run on it."""

    xs: list[torch.Tensor]
    """The states ``x_0 .. x_n`` (detached, the sampler's own values)."""
    vs: list[torch.Tensor]
    """The network outputs ``v_0 .. v_{n-1}`` (detached)."""
    s: list[float]
    """The Euler time of each state (sigma; 0 is clean)."""
    c: list[float]
    """What each state is multiplied by into Euler coordinates."""
    ts: list[torch.Tensor]
    """The network timestep of each step."""
    sched: Any
    denoiser: Callable
    cond: Any
    z: torch.Tensor
    """The latent sampling started from (it may require grad)."""
    calls: int = 0
    """Network calls with a graph made on this chain."""
    rolled: bool = True
    """Whether the states come from a rollout (``n`` network calls) rather than from arithmetic."""

    @classmethod
    def roll(cls, sampling: Sampling, x: torch.Tensor) -> "Chain":
        """Sample from ``x`` without a graph, keeping every state and network output."""
        stop = sampling.steps if sampling.stop is None else sampling.stop
        xs, vs = [x.detach()], []

        def record(info: dict[str, Any]) -> None:
            xs.append(info["x"].detach())
            vs.append(info["output"].detach())
            if sampling.callback is not None:
                sampling.callback(info)

        with torch.no_grad():
            sampling.run(x.detach(), callback=record)
        return cls.on_grid(sampling, x, xs, vs)

    @classmethod
    def on_grid(cls, sampling: Sampling, x: torch.Tensor, xs: list[torch.Tensor], vs: list[torch.Tensor],
                rolled: bool = True) -> "Chain":
        """The chain of the states ``xs`` and outputs ``vs`` on the grid of ``sampling``."""
        stop = sampling.steps if sampling.stop is None else sampling.stop
        sched = fresh_scheduler(sampling.scheduler, sampling.steps, device=x.device,
                                **(sampling.set_timesteps_kwargs or {}))
        s, c = _coordinates(sched, sampling.start, stop)
        return cls(xs, vs, s, c, list(sched.timesteps[sampling.start:stop]), sched, sampling.denoiser, sampling.cond, x,
                   rolled=rolled)

    @property
    def n(self) -> int:
        return len(self.vs)

    def rows(self, index: torch.Tensor) -> "Chain":
        """The chain of the rows ``index`` of the batch (their network calls see only those rows)."""
        batch = len(self.z)
        return replace(self, xs=[x[index] for x in self.xs], vs=[v[index] for v in self.vs], z=self.z[index],
                       denoiser=_RowsDenoiser(self.denoiser, index, batch), cond=_rows(self.cond, index, batch),
                       calls=0)

    def u(self, i: int) -> torch.Tensor:
        """The cached state ``i`` in Euler coordinates, carrying the latent's gradient (if any)."""
        u = self.c[i] * self.xs[i]
        return u + self.c[0] * (self.z - self.z.detach()) if self.z.requires_grad else u

    def x(self, u: torch.Tensor, i: Optional[int]) -> torch.Tensor:
        """A state in Euler coordinates back in the sampler's (``i=None``: at ``s = 0``, the data)."""
        return u if i is None else u / self.c[i]

    def time(self, i: Optional[int]) -> float:
        return 0.0 if i is None else self.s[i]

    def net(self, x_in: torch.Tensor, i: int, gamma: float = 1.0) -> torch.Tensor:
        """The network at step ``i`` on ``x_in`` (sampler scale), with its graph (gradient times ``gamma``)."""
        self.calls += 1
        t = self.ts[i]
        return rescaled(self.denoiser(scale_input(self.sched, x_in, t), t, self.cond), gamma)

    def distance(self, u_hat: torch.Tensor, i: int) -> torch.Tensor:
        """Per row: the mean absolute gap between a surrogate state and the cached state ``i``."""
        return (self.x(u_hat, i) - self.xs[i]).detach().double().abs().flatten(1).mean(1)


def similarity_weight(d_j: torch.Tensor, d_0: torch.Tensor, tau: float) -> torch.Tensor:
    """LeapAlign's trajectory-similarity weight ``1 / (max(d_j, tau) + max(d_0, tau))`` per row (detached)."""
    return 1.0 / (d_j.clamp(min=tau) + d_0.clamp(min=tau))
