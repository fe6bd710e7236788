"""``sdo finetune``: align a model to a reward by fine-tuning through its own sampler.

Each optimizer step generates ``batch x processes x grad_accum`` samples with the chosen gradient
estimator (default: SDO with a random kept step per sample), scores the decoded images with the
reward and takes an AdamW step on ``-mean reward (+ kl_weight * KL penalty)``. Every sample's
condition, starting noise and estimator draw are functions of ``(seed, global sample index)``,
so a run is reproducible, resumes exactly from a checkpoint, and gives the same result on one
process or several (data parallel: gradients are summed over processes with Accelerate).

Run directory::

    config.json, metrics.jsonl (one row per optimizer step), eval.jsonl (one row per evaluation)
    eval/before.safetensors, eval/after.safetensors   fixed-noise samples: images NCHW in [-1, 1], labels
    eval/grid_step_XXXXXX.png                          evaluation samples, one row per condition
    reward_vs_time.png, summary.json
    checkpoints/step-XXXXXX/                           see :mod:`.checkpoint`
    final/                                             the trained target (see :mod:`.targets`)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from .. import reporting, rundir
from ..config import resolve_device
from ..errors import UsageError
from ..estimators import get_estimator
from ..models import conditioning, denoiser_of, image_shape, load_model, timestep_kwargs
from ..rewards import get_reward
from ..sampling import Mode, sample
from ..schedulers import fresh_scheduler, scheduler_for
from . import checkpoint as ckpt
from .config import EARLY_STOP_METRICS, RESUME_KEYS, FinetuneConfig
from .evaluation import eval_labels, eval_noise, evaluate, generate, reward_labels
from .targets import make_target

ARTIFACTS = ("config.json", "metrics.jsonl", "eval.jsonl", "eval", "reward_vs_time.png", "summary.json",
             "checkpoints", "final")
"""What a fine-tuning run writes (what ``--overwrite`` may remove)."""

# Separate streams derived from the seed: conditions/noise and estimator draws.
_NOISE, _PLAN, _KL = 1, 2, 3


def _stream(seed: int, kind: int, index: int) -> torch.Generator:
    key = hashlib.sha256(f"{seed}:{kind}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & ((1 << 63) - 1))


def conditions(config: FinetuneConfig, model: Any) -> list:
    """The training conditions, checked: class indices (``--cond``, ``--prompts-file``) on
    class-conditional models, prompts (``--prompt``, ``--prompts-file``) on text-to-image pipelines."""
    if getattr(model, "family", None) == "pixel":
        return [""]
    text = not hasattr(model, "num_classes")
    if text and config.prompts_file is None:
        if not config.prompt:
            raise UsageError("--prompt (or --prompts-file) gives no conditions to train on")
        return list(config.prompt)
    if config.prompts_file:
        path = Path(config.prompts_file)
        if not path.is_file():
            raise UsageError(f"--prompts-file {path} does not exist")
        items = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        source = f"--prompts-file {path}"
    else:
        items = [str(c) for c in config.cond]
        source = "--cond"
    if not items:
        raise UsageError(f"{source} gives no conditions to train on")
    if text:
        return items
    num = model.num_classes
    if items == ["all"]:
        return list(range(num))
    out = []
    for item in items:
        try:
            c = int(item)
        except ValueError:
            raise UsageError(f"{source}: {item!r} is not a class index (this model is class-conditional)") from None
        if not 0 <= c < num:
            raise UsageError(f"{source}: class {c} is out of range 0..{num - 1}")
        out.append(c)
    return out


def label_index(labels: list) -> list[int]:
    """Class indices as they are; prompts as their index in order of first appearance."""
    if labels and isinstance(labels[0], str):
        order = list(dict.fromkeys(labels))
        return [order.index(label) for label in labels]
    return list(labels)


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _EarlyStop:
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


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop the rows of steps after ``step`` (they are redone after a resume)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step and not json.loads(line).get("final")]
        reporting.atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune per ``config``; returns the summary (also written to ``OUT/summary.json``)."""
    config.check()
    resolve_device(config.device)  # an unknown or unavailable device fails here, before any work
    estimator = get_estimator(config.estimator, seed=config.seed)
    from accelerate import Accelerator

    # On a machine without CUDA, cpu=True is what makes Accelerate set up gloo across processes.
    accelerator = Accelerator(cpu=config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()))
    main = accelerator.is_main_process
    world = accelerator.num_processes
    device = accelerator.device if config.device in ("auto", "cpu") else torch.device(config.device)
    out = Path(config.out)
    claim = (rundir.claimed(out, "finetune", ARTIFACTS, overwrite=config.overwrite, resume=config.resume,
                            resumable=ckpt.latest_checkpoint(out) is not None) if main else contextlib.nullcontext())
    with claim:
        return _train(config, estimator, accelerator, device, out)


def _train(config: FinetuneConfig, estimator: Any, accelerator: Any, device: torch.device, out: Path) -> dict[str, Any]:
    main, world = accelerator.is_main_process, accelerator.num_processes
    resumed = ckpt.load_latest_intact(out, warn=lambda m: print(f"sdo: {m}", file=sys.stderr) if main else None) \
        if config.resume else None
    if config.resume and resumed is None:
        readable = "readable " if ckpt.list_checkpoints(out) else ""
        raise UsageError(f"--resume: no {readable}checkpoint in {ckpt.checkpoint_dir(out)} to resume from")
    latest = resumed[0] if resumed else None

    model = load_model(config.model, height=config.height, width=config.width, guidance_scale=config.guidance,
                       negative_prompt=config.negative_prompt, dtype=config.dtype).to(device)
    labels_source = conditions(config, model)
    # Training may average the reward over augmented views; evaluation scores the plain images.
    reward = get_reward(config.reward, shape=image_shape(model), model=model)
    train_reward = (get_reward(config.reward, shape=image_shape(model), model=model, augment=config.reward_augment,
                               views=config.reward_views, seed=config.seed) if config.reward_augment else reward)
    scheduler = scheduler_for(model, config.scheduler)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA's random initialisation: the same on every rank and run
        target = make_target(config.target, model, rank=config.lora_rank, alpha=config.lora_alpha,
                             modules=config.lora_modules, prompts=labels_source)
    params = target.parameters()
    if world > 1:  # start every rank from the main process's weights, whatever happened before
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in params:
                p.copy_(broadcast(p.detach().clone(), from_process=0))
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    from diffusers.optimization import get_scheduler as get_lr_schedule

    lr_schedule = get_lr_schedule(config.lr_schedule, optimizer, num_warmup_steps=config.lr_warmup,
                                  num_training_steps=config.total_steps or 1)
    ema = {k: v.clone() for k, v in target.state().items()} if config.ema else None
    stopper = _EarlyStop(config.early_stop_metric, config.early_stop)
    best_state: Optional[dict[str, torch.Tensor]] = None
    global_batch = config.batch * world * config.grad_accum
    resume_key = {k: getattr(config, k) for k in RESUME_KEYS} | {"global_batch": global_batch}

    def autocast():
        if config.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    step, samples_seen, wall = 0, 0, 0.0
    if resumed is not None:
        latest, tensors, optimizer_state, state = resumed
        if main and latest != ckpt.latest_checkpoint(out):
            print(f"sdo: resuming from {latest.name}, the newest intact checkpoint", file=sys.stderr)
        ckpt.check_resumable(state, resume_key, target.signature(), latest)
        target.load_state({k: v for k, v in tensors.items() if not k.startswith("ema.")})
        if ema is not None:
            ema = {k: tensors["ema." + k].to(device) for k in ema}
        optimizer.load_state_dict(optimizer_state["optimizer"])
        lr_schedule.load_state_dict(optimizer_state["lr_schedule"])
        step, samples_seen, wall = state["step"], state["samples"], state["wall_clock"]
        stopper.load(state["early_stop"])
        if "best" in optimizer_state:
            best_state = optimizer_state["best"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if latest is not None:
            for name in ("metrics.jsonl", "eval.jsonl"):
                _truncate_jsonl(out / name, step)
        else:
            for name in ("metrics.jsonl", "eval.jsonl"):
                (out / name).unlink(missing_ok=True)
        reporting.write_json(out / "config.json", {**asdict(config), "estimator_spec": estimator.spec,
                                                   "processes": world, "global_batch": global_batch,
                                                   "learning_rate": config.learning_rate, "device": str(device)})

    # Fixed evaluation noise and conditions, identical for every run with the same eval seed.
    ev_labels = eval_labels(labels_source, config.eval_per_class)
    ev_noise = eval_noise(model, len(ev_labels), config.eval_seed)

    def run_eval(name: Optional[str] = None, final: bool = False) -> dict[str, Any]:
        with target.swapped(ema) if ema is not None else contextlib.nullcontext():
            images = generate(model, scheduler, ev_noise, ev_labels, steps=config.steps,
                              guidance=config.guidance, seed=config.eval_seed, autocast=autocast)
        row = {"step": step, "wall_clock": wall, "samples": samples_seen, **evaluate(model, reward, images, ev_labels)}
        if final:
            row["final"] = True  # the exported weights (EMA or best), after the last step
        rows = [images[i * config.eval_per_class : (i + 1) * config.eval_per_class] for i in range(len(labels_source))]
        reporting.save_grid(out / "eval" / f"grid_step_{step:06d}.png", rows)
        if name:
            reporting.save_tensors(out / "eval" / f"{name}.safetensors",
                                   {"images": images, "labels": torch.as_tensor(label_index(ev_labels))})
        reporting.append_jsonl(out / "eval.jsonl", row)
        return row

    if main and latest is None:
        row = run_eval("before")
        if config.early_stop:
            stopper.update(row, 0)
            best_state = target.state()
    accelerator.wait_for_everyone()

    def write_checkpoint() -> None:
        tensors = target.state()
        if ema is not None:
            tensors |= {"ema." + k: v for k, v in ema.items()}
        opt_state = {"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict()}
        if best_state is not None:
            opt_state["best"] = best_state
        state = {"samples": samples_seen, "wall_clock": wall, "early_stop": stopper.state(),
                 "resume_key": resume_key, "signature": target.signature()}
        ckpt.save_checkpoint(out, step, tensors, opt_state, state, keep=config.keep_checkpoints)

    def micro_batch(first: int) -> tuple[torch.Tensor, list[int], list]:
        """Noise, conditions and estimator plans of global samples ``first .. first + batch - 1``."""
        noise, labels, plans = [], [], []
        for g in range(first, first + config.batch):
            gen = _stream(config.seed, _NOISE, g)
            labels.append(labels_source[int(torch.randint(len(labels_source), (1,), generator=gen))])
            noise.append(torch.randn(model.sample_shape, generator=gen))
            plans.append(estimator.reseed(int(torch.randint(2**62, (1,), generator=_stream(config.seed, _PLAN, g)))).plan(config.steps))
        return torch.stack(noise).to(device), labels, plans

    def kl_penalty(states: list[tuple[int, torch.Tensor]], labels: torch.Tensor, first: int) -> torch.Tensor:
        """Squared difference of the tuned and the base network outputs at one random visited step."""
        i, x = states[int(torch.randint(len(states), (1,), generator=_stream(config.seed, _KL, first)))]
        sched = fresh_scheduler(scheduler, config.steps, device=device, **timestep_kwargs(model, config.steps))
        t = sched.timesteps[i]
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        with torch.no_grad(), target.base(), autocast():
            reference = denoiser_of(model, config.guidance)(x_in, t, conditioning(model, labels))
        with autocast():
            tuned = denoiser_of(model, config.guidance)(x_in, t, conditioning(model, labels))
        return (tuned.float() - reference.float()).square().mean()

    limit = config.total_steps
    budget = None if config.minutes is None else config.minutes * 60.0
    stopped = None
    from tqdm.auto import tqdm

    bar = tqdm(total=limit, initial=step, desc=f"finetune[{config.target}, {estimator.spec}]",
               disable=not (config.progress and main))
    while True:
        if limit is not None and step >= limit:
            stopped = stopped or "max_steps"
            break
        if budget is not None and wall >= budget:
            stopped = "time budget"
            break
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(4, device=device)  # reward sum, kl sum, samples, grad steps
        for micro in range(config.grad_accum):
            first = step * global_batch + (micro * world + accelerator.process_index) * config.batch
            noise, labels, plans = micro_batch(first)
            label_tensor = reward_labels(labels, device)
            states: list[tuple[int, torch.Tensor]] = [(0, noise)]

            def keep_state(info: dict[str, Any]) -> None:
                if info["i"] + 1 < config.steps:
                    states.append((info["i"] + 1, info["x"].detach()))

            with autocast():
                result = sample(denoiser_of(model, config.guidance), scheduler, noise, steps=config.steps,
                                estimator=plans, cond=conditioning(model, labels), generator=config.seed + first,
                                set_timesteps_kwargs=timestep_kwargs(model, config.steps),
                                callback=keep_state if config.kl_weight else None)
            images = model.decode(result.sample).float().clamp(-1, 1)
            r = train_reward(images, label_tensor)
            loss = -r.sum() / global_batch
            if config.kl_weight:
                kl = kl_penalty(states, labels, first)
                loss = loss + config.kl_weight * kl / (world * config.grad_accum)
                totals[1] += kl.detach()
            if loss.requires_grad:
                loss.backward()
            totals[0] += r.detach().sum()
            totals[2] += len(labels)
            totals[3] += sum(p.count(Mode.GRAD, Mode.CHECKPOINT) for p in plans) / len(plans)
        # Data parallel: sum the gradients (each rank's loss is already divided by the global batch).
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        if world > 1:
            flat = accelerator.reduce(flat, reduction="sum")
            totals = accelerator.reduce(totals, reduction="sum")
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip_grad) if config.clip_grad
                          else flat.norm())
        if not math.isfinite(grad_norm):
            stopped = f"non-finite gradient at step {step}; weights of step {step} kept"
            break
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            with torch.no_grad():
                for k, p in target.named_parameters().items():
                    ema[k].mul_(config.ema).add_(p.detach(), alpha=1 - config.ema)
        step += 1
        samples_seen += int(totals[2])
        seconds = time.perf_counter() - began
        wall += seconds
        row = {"step": step, "reward": float(totals[0] / totals[2]), "samples": int(totals[2]),
               "lr": lr_schedule.get_last_lr()[0], "grad_norm": grad_norm, "seconds": seconds,
               "wall_clock": wall, "grad_steps": float(totals[3]) / (world * config.grad_accum)}
        if config.kl_weight:
            row["kl"] = float(totals[1]) / (world * config.grad_accum)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if main:
            reporting.append_jsonl(out / "metrics.jsonl", row)
            if config.eval_every and step % config.eval_every == 0:
                eval_row = run_eval()
                if config.early_stop and stopper.update(eval_row, step):
                    best_state = {k: v.clone() for k, v in ema.items()} if ema is not None else target.state()
        # Every rank takes the same decision (the clocks of the ranks differ slightly).
        halt = torch.tensor([float(stopper.triggered), float(budget is not None and wall >= budget)], device=device)
        if world > 1:
            halt = accelerator.reduce(halt, reduction="sum")
        if main and config.checkpoint_every and step % config.checkpoint_every == 0:
            write_checkpoint()
        accelerator.wait_for_everyone()
        if halt[0] > 0:
            stopped = f"early stopping: {config.early_stop_metric} did not improve for {config.early_stop} evaluations"
            break
        if halt[1] > 0:
            stopped = "time budget"
            break
    bar.close()
    if main and config.checkpoint_every and step % config.checkpoint_every:
        write_checkpoint()  # the last steps, so that a finished run can be extended with --resume

    # The result: the best weights when early stopping watched the run, the EMA when one is kept.
    if config.early_stop and best_state is not None:
        target.load_state(best_state)
    elif ema is not None:
        target.load_state(ema)
    from accelerate.utils import gather_object

    digests = gather_object([_digest(target.parameters())])
    summary: dict[str, Any] = {}
    if main:
        ema = None  # the weights are final (EMA or best already loaded): evaluate them as they are
        final_row = run_eval("after", final=True)
        base_row = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
        target.export(out / "final")
        history = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line]
        reporting.plot_curves(out / "reward_vs_time.png",
                              {estimator.spec: ([h["wall_clock"] / 60 for h in history], [h["reward"] for h in history])},
                              xlabel="training wall-clock (minutes)", ylabel=f"evaluation reward ({config.reward})",
                              title=f"fine-tuning ({config.target})")
        summary = {
            "before": base_row, "after": final_row, "steps": step, "samples": samples_seen,
            "wall_clock": wall, "stopped": stopped, "processes": world, "global_batch": global_batch,
            "estimator": estimator.spec, "target": config.target, "ema": config.ema,
            "best_step": stopper.best_step if config.early_stop else None,
            "rank_weight_digests": digests,
        }
        reporting.write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    return summary


def describe(summary: dict[str, Any], out: Path) -> str:
    before, after = summary["before"], summary["after"]
    lines = [f"evaluation reward {before['reward']:.4f} -> {after['reward']:.4f} "
             f"after {summary['steps']} steps ({summary['samples']} samples, {summary['wall_clock'] / 60:.1f} min; "
             f"stopped: {summary['stopped']})"]
    if "digits_fd" in after and "digits_fd" in before:
        lines.append(f"digits-FD {before['digits_fd']:.2f} -> {after['digits_fd']:.2f}, "
                     f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
                     f"diversity {before['diversity']:.2f} -> {after['diversity']:.2f}")
    lines += [f"run directory: {out}",
              f"  trained {summary['target']}: {out / 'final'}",
              f"  evaluation samples: {out / 'eval' / 'before.safetensors'}, {out / 'eval' / 'after.safetensors'}",
              f"  curves: {out / 'reward_vs_time.png'}, {out / 'metrics.jsonl'}, {out / 'eval.jsonl'}"]
    return "\n".join(lines)
