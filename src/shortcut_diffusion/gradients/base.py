"""The one interface of every way to get a gradient through sampling.

A :class:`GradientMethod` decides what the backward pass sees when a sample is drawn. It gets a
:class:`Sampling` (the denoiser, the scheduler, the conditioning, the step range, the noise: one
sampling call) and the starting latent, and returns a :class:`~shortcut_diffusion.sampling.loop.SampleOutput`
whose ``sample`` carries the method's graph: ``loss(decode(sample)).backward()`` then leaves the
method's gradient in every tensor that requires grad (the latent, the conditioning, the weights).
Three kinds implement it, and nothing outside this package asks which one it is given:

- per-step plans (:mod:`.plans`): the one sampling loop with a :class:`~shortcut_diffusion.sampling.loop.Plan`
  of per-step modes (full, checkpointed, truncated, alignprop, refl, drtune, sdo);
- recomputing methods (:mod:`.recomputed`): sample without a graph, then run backward one step at
  a time with the states recomputed (the adjoint, DOODL);
- cached-rollout methods: sample once without a graph, keep that rollout (states, timesteps,
  network outputs) and build the backward from the cache, re-running the network only at chosen
  steps (``sdo:rollout=cached``, :mod:`.cached`).

Each method also says, before any work, which settings it cannot follow (:meth:`GradientMethod.check`),
how the plain samples of a latent are drawn with it (:meth:`GradientMethod.plain`: its own chain),
what latent optimization does after each update (:meth:`GradientMethod.project`), and what
fine-tuning minimises given the rewards of its samples (:meth:`GradientMethod.training_loss`: minus
the reward by default; a method with a loss of its own, such as Adjoint Matching's regression,
returns that instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Plan, PlanSource, SampleOutput, sample


@dataclass
class Sampling:
    """One sampling call, as :func:`~shortcut_diffusion.sampling.loop.sample` takes it."""

    denoiser: Callable
    scheduler: Any
    steps: int
    cond: Any = None
    generator: Union[torch.Generator, int, None] = None
    start: int = 0
    stop: Optional[int] = None
    step_kwargs: Optional[dict[str, Any]] = None
    set_timesteps_kwargs: Optional[dict[str, Any]] = None
    callback: Optional[Callable[[dict[str, Any]], None]] = None
    progress: bool = False
    params: Sequence[torch.Tensor] = field(default_factory=tuple)
    """The tensors besides the latent that the gradient is for (conditioning, trained weights):
    what a method that runs its own backward pass must return gradients for."""
    resident: Optional[Callable[[], Sequence[torch.Tensor]]] = None
    """The model's weights (resident anyway): what a method measuring its own backward pass's
    memory leaves out."""
    labels: Optional[Sequence[Any]] = None
    """The samples' conditions (class indices or prompts), where the caller has them: what a
    method that draws real data of the same class reads."""

    def run(self, x: torch.Tensor, estimator: PlanSource = None, per_sample: bool = False, **options: Any
            ) -> SampleOutput:
        """The one loop over this call's settings (``options`` override them)."""
        denoiser = options.pop("denoiser", self.denoiser)
        settings = {"cond": self.cond, "generator": self.generator, "start": self.start, "stop": self.stop,
                    "step_kwargs": self.step_kwargs, "set_timesteps_kwargs": self.set_timesteps_kwargs,
                    "callback": self.callback, "progress": self.progress, **options}
        return sample(denoiser, self.scheduler, x, steps=self.steps, estimator=estimator, per_sample=per_sample,
                      **settings)


class GradientMethod:
    """What every gradient method provides (see the module docstring)."""

    name: str = ""
    paper: str = ""
    """The paper the method follows, cited in its module."""
    noise_prior: bool = True
    """Whether latent optimization keeps optimized initial noise near the Gaussian shell with the
    chi prior by default (DOODL projects it there instead)."""

    def params(self) -> dict:
        """The settings that distinguish this method from its defaults (for reports)."""
        return {}

    def spec_params(self) -> dict:
        """Every setting :attr:`spec` writes."""
        return self.params()

    @property
    def spec(self) -> str:
        """``name`` or ``name:key=value,...``: the string :func:`~shortcut_diffusion.gradients.get_method` parses back."""
        params = self.spec_params()
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")

    def __repr__(self) -> str:
        return f"<gradient method {self.spec}>"

    def check_task(self, task: str) -> None:
        """Refuse a task this method does not do (``latent``, ``finetune`` or ``finetune:TARGET`` such as
        ``finetune:lora``, ``gradcheck``, ``bench``), before anything is loaded."""

    def check(self, scheduler: Any, steps: int, *, start: int = 0, step_kwargs: Optional[dict] = None,
              task: str = "latent") -> None:
        """Refuse, before any work, what this method cannot do: a schedule, a step range, step
        arguments, or a task."""
        self.check_task(task)

    def held_graphs(self, steps: int) -> int:
        """Network graphs one sample holds for backward at once (the memory check before a run)."""
        return 1

    def next_plan(self, steps: int) -> Optional[Plan]:
        """The per-step plan the method's next call draws (from a copy: its own draws stay
        untouched), or None for a method that is not a plan of the scheduler's loop."""
        return None

    def moves_start(self, steps: int) -> bool:
        """Whether the gradient reaches the latent sampling starts from (what latent optimization moves)."""
        return True

    def reseed(self, seed: int) -> "GradientMethod":
        """Restart the method's own random stream (a method without one ignores it)."""
        return self

    def rows(self, seeds: Sequence[int], steps: int) -> Union["GradientMethod", PlanSource]:
        """What to sample a batch with where every row has its own random draw (fine-tuning):
        ``seeds`` are the rows' draw seeds. Methods without per-row draws sample the batch as one."""
        return self

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        """Sample from ``x``; the output's graph is what this method lets the backward pass see."""
        raise NotImplementedError

    def plain(self, sampling: Sampling, x: torch.Tensor) -> SampleOutput:
        """The samples of ``x`` with this method's chain, recording everything (call it under
        ``torch.no_grad()`` for plain sampling): the scheduler's own loop unless the method
        differentiates another chain."""
        return sampling.run(x)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Latent optimization: the optimized latent after each update (identity by default)."""
        return z

    def training_loss(self, out: Any, rewards: torch.Tensor, base: Optional[Callable[[], Any]] = None
                      ) -> torch.Tensor:
        """Fine-tuning: the loss of each row, given the output of :meth:`sample` (``out.sample``,
        ``out.info``) and the rewards of its decoded samples; its gradient is what the step follows.
        ``base()`` is a context manager that gives the denoiser of the network fine-tuning started
        from (for a method that regresses onto it). By default minus each row's reward, times its
        loss weight."""
        return -loss_weighted(rewards, out.info)


class FixedPlans(GradientMethod):
    """A :class:`~shortcut_diffusion.sampling.loop.Plan` (or one per row) given directly, or ``None``
    for recording every step: the loop as the caller asked for it."""

    name = "plan"

    def __init__(self, plans: PlanSource):
        self.plans = plans

    def sample(self, sampling: Sampling, x: torch.Tensor, per_sample: bool = False) -> SampleOutput:
        return sampling.run(x, self.plans, per_sample)


def loss_weighted(rewards: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """Each row's reward times the loss weight its gradient method reported (``info["loss_weight"]``,
    e.g. LeapAlign's trajectory similarity); unchanged where it reported none."""
    weight = info.get("loss_weight")
    return rewards if weight is None else rewards * weight.to(rewards.device, rewards.dtype)


def check_no_options(name: str, options: dict) -> None:
    if options:
        raise UsageError(f"{name} takes no options, got {', '.join(options)}")
