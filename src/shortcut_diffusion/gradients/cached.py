"""Cached rollouts: sample once without a graph, keep the rollout, build the backward from it.

A cached-rollout method runs the sampler once under ``no_grad`` and keeps every step's network
output. Its backward pass is then a replay of the scheduler's updates on the cached outputs, with
the network re-run (with its graph) only at the steps the method chooses: the sampler's linear
path stays differentiable and costs no network call. The surrogate methods of reward
backpropagation on flow models (a cached rollout, an active set of re-forwarded steps) are of this
form.

``sdo:rollout=cached`` is SDO in this form: the replay keeps the same step as the in-loop SDO and
gives the same gradient (``tests/test_gradient_methods.py`` checks it in float64), at one network
call more (the rollout evaluates every step, the replay re-runs the kept one). The in-loop form is
the default because it is cheaper.
"""

from __future__ import annotations

from typing import Any

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Denoiser, PlanSource, SampleOutput, current_rows
from shortcut_diffusion.gradients.base import Sampling


class Rollout:
    """The network output of every step of one sampling call, by timestep."""

    def __init__(self) -> None:
        self.outputs: dict[float, torch.Tensor] = {}
        self.final: torch.Tensor | None = None

    def record(self, info: dict[str, Any]) -> None:
        self.outputs[float(info["t"])] = info["output"].detach()


class ReplayDenoiser:
    """The cached output at a step run without grad; the real network where a graph is kept."""

    def __init__(self, denoiser: Denoiser, rollout: Rollout):
        self.denoiser, self.rollout = denoiser, rollout

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.denoiser(x, t, cond)
        output = self.rollout.outputs[float(t)]
        rows = current_rows()
        return output[rows[0].to(output.device)] if rows is not None else output


def cached_rollout(sampling: Sampling, x: torch.Tensor) -> Rollout:
    """Sample from ``x`` without a graph and keep every step's network output."""
    if isinstance(sampling.generator, torch.Generator):
        raise UsageError("a cached rollout replays the scheduler's noise: give an int seed, not a torch.Generator")
    rollout, callback = Rollout(), sampling.callback

    def record(info: dict[str, Any]) -> None:
        rollout.record(info)
        if callback is not None:
            callback(info)

    with torch.no_grad():
        rollout.final = sampling.run(x.detach(), callback=record).sample
    return rollout


def replay(sampling: Sampling, x: torch.Tensor, rollout: Rollout, plans: PlanSource,
           per_sample: bool = False) -> SampleOutput:
    """The scheduler's updates from ``x`` on the cached outputs, recorded as ``plans`` say; the
    network runs again only at the steps whose graph is kept."""
    return sampling.run(x, plans, per_sample, denoiser=ReplayDenoiser(sampling.denoiser, rollout), callback=None,
                        progress=False)
