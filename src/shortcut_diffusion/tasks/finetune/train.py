"""Fine-tuning as a library: :class:`FineTuning` (what a run shares), :class:`TrainState` (what
changes, and what a checkpoint holds) and :func:`train_step` (one optimizer step).

Each optimizer step generates ``batch x processes x grad_accum`` samples through
:func:`shortcut_diffusion.tasks.generate.generate` with the chosen gradient estimator (default: SDO
with a random kept step per sample), scores the decoded images with the reward and takes an AdamW
step on ``-mean reward (+ kl_weight * KL penalty)``, or on the loss a gradient method supplies
instead (Adjoint Matching's regression: ``GradientMethod.training_loss``). Every sample's
condition, starting noise and estimator draw are functions of ``(seed, global sample index)``, so a run is reproducible, resumes
exactly from a checkpoint, and gives the same result on one process or several (data parallel:
the gradients are summed over processes by ``reduce``).

The run directory (checkpoints, evaluation schedule, export) is a thin layer above, in
:mod:`.run`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.gradients import GradientMethod
from shortcut_diffusion.tasks.generate import frames_to_decode, generate, reward_labels
from shortcut_diffusion.io.interrupts import deferred
from shortcut_diffusion.meters import budget_clock
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.precision import Precision
from shortcut_diffusion.sampling.loop import derived_generator
from shortcut_diffusion.sampling.schedulers import fresh_scheduler, scale_input
from shortcut_diffusion.tasks.finetune.config import EARLY_STOP_METRICS, FinetuneConfig
from shortcut_diffusion.tasks.finetune.sharding import grad_norm
from shortcut_diffusion.tasks.finetune.targets import Target

# Separate streams derived from the seed: conditions/noise, estimator draws and the KL step.
_NOISE, _PLAN, _KL = 1, 2, 3


def stream(seed: int, kind: int, index: int) -> torch.Generator:
    """The random stream ``kind`` of global sample ``index``: a function of the seed and both only."""
    return derived_generator(seed, kind, index)


@dataclass
class FineTuning:
    """What every step of one run shares. ``world``/``rank`` and ``reduce`` (a sum over processes)
    describe data parallelism; the defaults are one process."""

    config: FinetuneConfig
    model: DiffusionModel
    target: Target
    reward: Callable
    scheduler: Any
    estimator: GradientMethod
    conditions: list
    precision: Precision
    world: int = 1
    rank: int = 0
    reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    sharded: bool = False
    """The network is sharded over the processes (FSDP, :mod:`.sharding`): it sums the gradients itself."""

    @property
    def global_batch(self) -> int:
        return self.config.batch * self.world * self.config.grad_accum

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.target.parameters()


class EarlyStop:
    """Evaluations without improvement of one metric; the best step."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience, self.sign = metric, patience, EARLY_STOP_METRICS[metric]
        self.best: Optional[float] = None
        self.best_step = 0
        self.bad = 0

    def update(self, row: dict[str, Any], step: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        value = row.get(self.metric)
        if value is None:
            raise UsageError(f"--early-stop-metric {self.metric} is not measured on this model")
        if self.best is None or self.sign * (value - self.best) > 0:
            self.best, self.best_step, self.bad = value, step, 0
            return True
        self.bad += 1
        return False

    @property
    def triggered(self) -> bool:
        return bool(self.patience) and self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]


@dataclass
class TrainState:
    """Everything a step changes: counters, optimizer, schedule, EMA, early stopping, best weights."""

    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    early_stop: EarlyStop
    ema: Optional[dict[str, torch.Tensor]] = None
    best: Optional[dict[str, torch.Tensor]] = None
    step: int = 0
    samples: int = 0
    wall_clock: float = 0.0

    def checkpoint(self, ft: FineTuning) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """``(tensors, optimizer state, state)`` for :func:`.checkpoint.save_checkpoint`."""
        tensors = ft.target.state()
        if self.ema is not None:
            tensors |= {"ema." + k: v for k, v in self.ema.items()}
        opt = {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
               "precision": ft.precision.state_dict()}
        if self.best is not None:
            opt["best"] = self.best
        meta = {"samples": self.samples, "wall_clock": self.wall_clock, "early_stop": self.early_stop.state(),
                "signature": ft.target.signature()}
        return tensors, opt, meta

    def restore(self, ft: FineTuning, tensors: dict[str, torch.Tensor], opt: dict[str, Any], meta: dict[str, Any]) -> None:
        ft.target.load_state({k: v for k, v in tensors.items() if not k.startswith("ema.")})
        if self.ema is not None:
            self.ema = {k: tensors["ema." + k].to(ft.model.device) for k in self.ema}
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_schedule.load_state_dict(opt["lr_schedule"])
        ft.precision.load_state_dict(opt.get("precision", {}))
        self.best = opt.get("best")
        self.step, self.samples, self.wall_clock = meta["step"], meta["samples"], meta["wall_clock"]
        self.early_stop.load(meta["early_stop"])


def make_state(ft: FineTuning) -> TrainState:
    """A fresh state: AdamW over the target's float32 tensors and the learning-rate schedule."""
    from diffusers.optimization import get_scheduler as get_lr_schedule

    config = ft.config
    optimizer = torch.optim.AdamW(ft.params, lr=config.learning_rate, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    schedule = get_lr_schedule(config.lr_schedule, optimizer, num_warmup_steps=config.lr_warmup,
                               num_training_steps=config.total_steps or 1)
    ema = {k: v.clone() for k, v in ft.target.state().items()} if config.ema else None
    return TrainState(optimizer, schedule, EarlyStop(config.early_stop_metric, config.early_stop), ema=ema)


def micro_batch(ft: FineTuning, first: int) -> tuple[torch.Tensor, list, GradientMethod]:
    """Noise, conditions and the gradient method with every row's own draw, for the global
    samples ``first .. first + batch - 1``."""
    noise, labels, seeds = [], [], []
    steps = ft.config.steps
    for g in range(first, first + ft.config.batch):
        gen = stream(ft.config.seed, _NOISE, g)
        labels.append(ft.conditions[int(torch.randint(len(ft.conditions), (1,), generator=gen))])
        noise.append(torch.randn(ft.model.sample_shape, generator=gen))
        seeds.append(int(torch.randint(2**62, (1,), generator=stream(ft.config.seed, _PLAN, g))))
    return torch.stack(noise).to(ft.model.device), labels, ft.estimator.rows(seeds, steps)


@contextlib.contextmanager
def base_denoiser(ft: FineTuning) -> Iterator[Callable]:
    """The denoiser of the network as it was before fine-tuning (at the run's guidance)."""
    with ft.target.base():
        yield ft.model.denoiser(ft.config.guidance)


def kl_penalty(ft: FineTuning, states: list[tuple[int, torch.Tensor]], labels: list, first: int) -> torch.Tensor:
    """Squared difference of the tuned and the base network outputs at one random visited step."""
    config, model = ft.config, ft.model
    i, x = states[int(torch.randint(len(states), (1,), generator=stream(config.seed, _KL, first)))]
    sched = fresh_scheduler(ft.scheduler, config.steps, device=model.device, **model.timestep_kwargs(config.steps))
    t = sched.timesteps[i]
    x_in = scale_input(sched, x, t)
    cond = model.conditioning(labels)
    with torch.no_grad(), ft.target.base(), ft.precision.autocast():
        reference = model.denoiser(config.guidance)(x_in, t, cond)
    with ft.precision.autocast():
        tuned = model.denoiser(config.guidance)(x_in, t, cond)
    return (tuned.float() - reference.float()).square().mean()


def _micro_step(ft: FineTuning, first: int, totals: torch.Tensor) -> None:
    """Generate, score and backpropagate one micro-batch; accumulate reward, KL, samples, graph steps."""
    config = ft.config
    noise, labels, method = micro_batch(ft, first)
    states: list[tuple[int, torch.Tensor]] = [(0, noise)]

    def keep_state(info: dict[str, Any]) -> None:
        if info["i"] + 1 < config.steps:
            states.append((info["i"] + 1, info["x"].detach()))

    out = generate(ft.model, noise, labels, steps=config.steps, estimator=method, guidance=config.guidance,
                   scheduler=ft.scheduler, seed=config.seed + first, step_kwargs=config.step_kwargs,
                   precision=ft.precision, callback=keep_state if config.kl_weight else None, compile=config.compile,
                   frames=frames_to_decode(ft.model, ft.reward))
    r = ft.reward(out.images, reward_labels(labels, ft.model.device))
    with ft.precision.autocast():  # minus the reward, or the method's own loss (Adjoint Matching)
        loss = method.training_loss(out, r, base=lambda: base_denoiser(ft)).sum() / ft.global_batch
    if config.kl_weight:
        kl = kl_penalty(ft, states, labels, first)
        loss = loss + config.kl_weight * kl / (ft.world * config.grad_accum)
        totals[1] += kl.detach()
    if loss.requires_grad:
        ft.precision.backward(loss)
    totals[0] += r.detach().sum()
    totals[2] += len(labels)
    plans = out.plans or (out.plan,)
    totals[3] += sum(p.graph_steps for p in plans) / len(plans)


def _clip(params: list[torch.nn.Parameter], max_norm: Optional[float], sharded: bool) -> torch.Tensor:
    """The gradients' global norm, after clipping them to ``max_norm`` (when given)."""
    if not sharded:
        return (torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm else
                torch.cat([p.grad.flatten() for p in params]).norm())
    norm = grad_norm(params)
    if max_norm:  # as clip_grad_norm_ does it
        scale = min(1.0, float(max_norm / (norm + 1e-6)))
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm


def _reduce_gradients(ft: FineTuning) -> None:
    """Data parallel: sum the gradients over processes (each loss is already divided by the global batch)."""
    params = ft.params
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    if ft.world > 1:
        flat = ft.reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def train_step(ft: FineTuning, state: TrainState) -> tuple[dict[str, Any], Optional[str]]:
    """One optimizer step. Returns its metrics row and, when training must stop (a non-finite
    reward, or a non-finite gradient without loss scaling), why; the weights are then left as they were."""
    config = ft.config
    began = budget_clock()
    state.optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(4, device=ft.model.device)  # reward sum, kl sum, samples, graph steps
    for micro in range(config.grad_accum):
        _micro_step(ft, state.step * ft.global_batch + (micro * ft.world + ft.rank) * config.batch, totals)
    if not ft.sharded:
        _reduce_gradients(ft)
    if ft.world > 1:
        totals = ft.reduce(totals)
    if not math.isfinite(float(totals[0])):  # also when its gradient is finite (a NaN constant added)
        return {}, f"non-finite reward at step {state.step}; weights of step {state.step} kept"
    ft.precision.unscale(state.optimizer)
    grad_norm = float(_clip(ft.params, config.clip_grad, ft.sharded))
    if not math.isfinite(grad_norm) and not ft.precision.scaled:
        return {}, f"non-finite gradient at step {state.step}; weights of step {state.step} kept"
    with deferred():  # Ctrl-C or SIGTERM waits for the whole update: a checkpoint then resumes exactly
        stepped = ft.precision.step(state.optimizer)
        state.lr_schedule.step()
        if state.ema is not None and stepped:
            with torch.no_grad():
                for k, p in ft.target.named_parameters().items():
                    state.ema[k].mul_(config.ema).add_(p.detach(), alpha=1 - config.ema)
        seconds = budget_clock() - began
        state.step += 1
        state.samples += int(totals[2])
        state.wall_clock += seconds
    row = {"step": state.step, "reward": float(totals[0] / totals[2]), "samples": int(totals[2]),
           "lr": state.lr_schedule.get_last_lr()[0], "grad_norm": grad_norm, "seconds": seconds,
           "wall_clock": state.wall_clock, "grad_steps": float(totals[3]) / (ft.world * config.grad_accum)}
    if config.kl_weight:
        row["kl"] = float(totals[1]) / (ft.world * config.grad_accum)
    if ft.precision.scaled:
        row["step_skipped"] = not stepped  # fp16: the scaled gradient overflowed; the scale is lowered
    return row, None
