"""``sdo finetune``: the run directory around :func:`.train.train_step`.

Run directory::

    config.json, metrics.jsonl (one row per optimizer step), eval.jsonl (one row per evaluation)
    eval/before.safetensors, eval/after.safetensors   fixed-noise samples: images NCHW in [-1, 1], labels
    eval/grid_step_XXXXXX.png                          evaluation samples, one row per condition
    eval/videos/{before,after}_XX.gif (.mp4)           video models: each sample (MP4 with PyAV installed)
    eval/before_after.png                              video models: each sample's frames, before and after
    reward_vs_time.png, summary.json
    checkpoints/step-XXXXXX/                           see :mod:`.checkpoint`
    final/                                             the trained target (see :mod:`.targets`), float32

Accelerate runs it data parallel (``accelerate launch -m shortcut_diffusion.cli finetune ...``):
the main process owns the run directory, evaluates and writes; every process trains. With
``--fsdp`` the network is sharded (:mod:`.sharding`) and every process also evaluates and exports,
since those need the whole network; the main process alone writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from shortcut_diffusion.io import reporting, rundir
from shortcut_diffusion.options.parsing import resolve_device
from shortcut_diffusion.gradients import get_method
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.interrupts import Interrupted, as_interrupted, deferred
from shortcut_diffusion.tasks.generate import frames_to_decode
from shortcut_diffusion.tasks.memory import check_batch_fits
from shortcut_diffusion.tasks.context import build_context
from shortcut_diffusion.rewards.held_out import describe_lines
from shortcut_diffusion.io.tracking import Tracker
from shortcut_diffusion.tasks.finetune import checkpoint as ckpt
from shortcut_diffusion.tasks.finetune.card import write_model_card
from shortcut_diffusion.tasks.finetune.config import RESUME_KEYS, FinetuneConfig
from shortcut_diffusion.tasks.finetune.evaluation import Evaluation, evaluation_conditions
from shortcut_diffusion.tasks.finetune.sharding import full_state_dict
from shortcut_diffusion.tasks.finetune.targets import make_target
from shortcut_diffusion.tasks.finetune.train import FineTuning, TrainState, make_state, train_step
from shortcut_diffusion.tasks.panel import panel_change_lines




def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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
    estimator = get_method(config.estimator, seed=config.seed)
    estimator.check_task(f"finetune:{config.target}")
    from accelerate import Accelerator

    # On a machine without CUDA, cpu=True is what makes Accelerate set up gloo across processes.
    accelerator = Accelerator(cpu=config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()))
    device = accelerator.device if config.device in ("auto", "cpu") else torch.device(config.device)
    if accelerator.distributed_type == "FSDP" and not config.fsdp:  # accelerate launch --use_fsdp: sdo shards itself
        config = replace(config, fsdp=True)
        config.check()
    out = Path(config.out)
    claim = (rundir.claimed(out, "finetune", overwrite=config.overwrite, resume=config.resume,
                            resumable=ckpt.latest_checkpoint(out) is not None)
             if accelerator.is_main_process else contextlib.nullcontext())
    with claim:
        ft = setup(config, estimator, device, accelerator)
        return _run(ft, accelerator, out)


def setup(config: FinetuneConfig, estimator: Any, device: torch.device, accelerator: Any = None) -> FineTuning:
    """Load the model, attach the target (float32 masters), build the rewards: a :class:`FineTuning`."""
    context = build_context(config, batch=None, device=device, progress=config.progress)
    model, labels, scheduler = context.model, context.conditions, context.scheduler
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA's random initialisation: the same on every rank and run
        target = make_target(config.target, model, rank=config.lora_rank, alpha=config.lora_alpha,
                             modules=config.lora_modules, labels=labels, keep_base=not config.fsdp)
    context.apply_memory_options(config)
    estimator.check(scheduler, config.steps, step_kwargs=config.step_kwargs,
                    task="finetune")
    check_batch_fits(model, estimator, steps=config.steps, batch=config.batch, labels=labels,
                     guidance=config.guidance, precision=context.precision,
                     frames=frames_to_decode(model, context.reward, draw=False))
    if config.offload_text_encoders and model.device.type != "cpu":  # every prompt the run samples, encoded first
        model.prepare([*labels, *(evaluation_conditions(config, model) or [])])
        model.offload_text_encoders()
    world = accelerator.num_processes if accelerator is not None else 1
    ft = FineTuning(config, model, target, context.reward, scheduler, estimator, labels,
                    context.precision, world=world,
                    rank=accelerator.process_index if accelerator is not None else 0,
                    reduce=(lambda t: accelerator.reduce(t, reduction="sum")) if world > 1 else (lambda t: t))
    if world > 1:  # start every rank from the main process's weights, whatever happened before
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in ft.params:
                p.copy_(broadcast(p.detach().clone(), from_process=0))
    if config.fsdp:
        if world < 2:
            raise UsageError("--fsdp shards the network over several processes: start them with "
                             "accelerate launch --num_processes N -m shortcut_diffusion finetune ...")
        from shortcut_diffusion.tasks.finetune.sharding import shard

        shard(model.network)
        ft.sharded = True
    return ft


def _resume(ft: FineTuning, state: TrainState, out: Path, main: bool) -> bool:
    """Restore the newest intact checkpoint into ``state`` (with ``--resume``); True when resumed."""
    if not ft.config.resume:
        return False
    warn = (lambda message: print(f"sdo: {message}", file=sys.stderr)) if main else None
    found = ckpt.load_latest_intact(out, warn=warn)
    if found is None:
        readable = "readable " if ckpt.list_checkpoints(out) else ""
        raise UsageError(f"--resume: no {readable}checkpoint in {ckpt.checkpoint_dir(out)} to resume from")
    path, tensors, optimizer_state, meta = found
    ckpt.check_resumable(meta, _resume_key(ft), ft.target.signature(), path)
    state.restore(ft, tensors, optimizer_state, meta)
    if main and path != ckpt.latest_checkpoint(out):
        print(f"sdo: resuming from {path.name}, the newest intact checkpoint", file=sys.stderr)
    return True


def _resume_key(ft: FineTuning) -> dict[str, Any]:
    return {k: getattr(ft.config, k) for k in RESUME_KEYS} | {"global_batch": ft.global_batch}


def _start_files(ft: FineTuning, state: TrainState, out: Path, resumed: bool) -> None:
    for name in ("metrics.jsonl", "eval.jsonl"):
        if resumed:
            _truncate_jsonl(out / name, state.step)
        else:
            (out / name).unlink(missing_ok=True)
    reporting.write_json(out / "config.json", {**ft.config.as_dict(), "estimator_spec": ft.estimator.spec,
                                               "processes": ft.world, "global_batch": ft.global_batch,
                                               "learning_rate": ft.config.learning_rate,
                                               "device": str(ft.model.device), "torch_threads": torch.get_num_threads()})


def _save_checkpoint(ft: FineTuning, state: TrainState, out: Path) -> None:
    tensors, opt, meta = state.checkpoint(ft)
    ckpt.save_checkpoint(out, state.step, tensors, opt, {**meta, "resume_key": _resume_key(ft)},
                         keep=ft.config.keep_checkpoints)


def _run(ft: FineTuning, accelerator: Any, out: Path) -> dict[str, Any]:
    config, main = ft.config, accelerator.is_main_process
    state = make_state(ft)
    resumed = _resume(ft, state, out, main)
    tracker = Tracker(config.report_to if main else "none", out, "finetune", config.as_dict())
    evaluation = Evaluation(ft, out, write=main, tracker=tracker)
    if main:
        _start_files(ft, state, out, resumed)
    if not resumed and (main or ft.sharded):  # a sharded network samples on every process
        row = evaluation.run(state, name="before")
        if main and config.early_stop:
            state.early_stop.update(row, 0)
            state.best = ft.target.state()
    accelerator.wait_for_everyone()
    stopped = _train(ft, state, accelerator, evaluation, out)
    if main and config.checkpoint_every and state.step % config.checkpoint_every:
        _save_checkpoint(ft, state, out)  # the last steps, so that a finished run can be extended with --resume
    summary = _finish(ft, state, accelerator, evaluation, out, stopped)
    tracker.close({k: v for k, v in summary.items() if k not in ("before", "after")}, state.step)
    return summary


def _train(ft: FineTuning, state: TrainState, accelerator: Any, evaluation: Evaluation, out: Path) -> Optional[str]:
    """Optimizer steps until the step limit, the time budget or early stopping; why it stopped."""
    from tqdm.auto import tqdm

    config, main = ft.config, accelerator.is_main_process
    limit, budget = config.total_steps, None if config.minutes is None else config.minutes * 60.0
    bar = tqdm(total=limit, initial=state.step, desc=f"finetune[{config.target}, {ft.estimator.spec}]",
               disable=not (config.progress and main))
    stopped, row = None, None
    try:
        while stopped is None:
            if limit is not None and state.step >= limit:
                stopped = "max_steps"
                break
            if budget is not None and state.wall_clock >= budget:
                stopped = "time budget"
                break
            row, stopped = train_step(ft, state)
            if stopped:
                break
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}")
            logged, row = row, None
            if main:
                reporting.append_jsonl(out / "metrics.jsonl", logged)
                evaluation.tracker.scalars(logged, state.step)
            stopped = _after_step(ft, state, accelerator, evaluation, out, budget)
    except KeyboardInterrupt as error:
        bar.close()
        _save_interrupted(ft, state, out, main, row, as_interrupted(error))
    bar.close()
    return stopped


def _save_interrupted(ft: FineTuning, state: TrainState, out: Path, main: bool, row: Optional[dict],
                      interrupted: Interrupted) -> None:
    """Ctrl-C or SIGTERM in training: a checkpoint of the last complete step (``--resume`` continues
    it exactly; a second signal waits for it), then the interrupt goes on, saying where it is."""
    with deferred():
        if main:
            if row:  # the step completed but its metrics row was not written yet
                reporting.append_jsonl(out / "metrics.jsonl", row)
            _save_checkpoint(ft, state, out)
    interrupted.saved = (f"checkpoint {ckpt.latest_checkpoint(out)} after step {state.step}; continue it with "
                         f"sdo finetune --out {out} --resume")
    raise interrupted


def _after_step(ft: FineTuning, state: TrainState, accelerator: Any, evaluation: Evaluation, out: Path,
                budget: Optional[float]) -> Optional[str]:
    """Evaluation, checkpoint and the decisions to stop after an optimizer step; why training stops, or None."""
    config, main = ft.config, accelerator.is_main_process
    stopped = None
    if config.eval_every and state.step % config.eval_every == 0 and (main or ft.sharded):
        with deferred():  # an interrupted evaluation would leave early stopping half updated
            evaluation.periodic(state)
        # Every rank takes the same decision (the clocks of the ranks differ slightly).
    halt = torch.tensor([float(state.early_stop.triggered), float(budget is not None and state.wall_clock >= budget)],
                        device=ft.model.device)
    halt = ft.reduce(halt)
    if main and config.checkpoint_every and state.step % config.checkpoint_every == 0:
        _save_checkpoint(ft, state, out)
    accelerator.wait_for_everyone()
    if halt[0] > 0:
        stopped = f"early stopping: {config.early_stop_metric} did not improve for {config.early_stop} evaluations"
    elif halt[1] > 0:
        stopped = "time budget"
    return stopped


def _finish(ft: FineTuning, state: TrainState, accelerator: Any, evaluation: Evaluation, out: Path,
            stopped: Optional[str]) -> dict[str, Any]:
    """The result (the best weights when early stopping watched, else the EMA when kept), its
    evaluation, the export and the summary."""
    config = ft.config
    if config.early_stop and state.best is not None:
        ft.target.load_state(state.best)
    elif state.ema is not None:
        ft.target.load_state(state.ema)
    from accelerate.utils import gather_object

    whole = full_state_dict(ft.model.network) if ft.sharded else None  # gathered on every process
    digests = gather_object([_digest(list(whole.values()) if whole is not None else ft.target.parameters())])
    summary: dict[str, Any] = {}
    state.ema = None  # the weights are final (EMA or best already loaded): evaluate them as they are
    final_row = evaluation.run(state, name="after", final=True) if accelerator.is_main_process or ft.sharded else None
    if accelerator.is_main_process:
        history = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line]
        if whole is not None:
            ft.target.export(out / "final", state=whole)
        else:
            ft.target.export(out / "final")
        reporting.plot_curves(out / "reward_vs_time.png",
                              {ft.estimator.spec: ([h["wall_clock"] / 60 for h in history], [h["reward"] for h in history])},
                              xlabel="training wall-clock (minutes)", ylabel=f"evaluation reward ({config.reward})",
                              title=f"fine-tuning ({config.target})")
        summary = {
            "before": history[0], "after": final_row, "steps": state.step, "samples": state.samples,
            "wall_clock": state.wall_clock, "stopped": stopped, "processes": ft.world,
            "global_batch": ft.global_batch, "estimator": ft.estimator.spec, "target": config.target,
            "ema": config.ema, "dtype": config.dtype, "skipped_steps": ft.precision.skipped,
            "best_step": state.early_stop.best_step if config.early_stop else None,
            "rank_weight_digests": digests, "fsdp": ft.sharded,
        }
        reporting.write_json(out / "summary.json", summary)
        write_model_card(out / "final", ft.model, config, summary)
    accelerator.wait_for_everyone()
    return summary


def describe(summary: dict[str, Any], out: Path) -> str:
    before, after = summary["before"], summary["after"]
    held_out = "seen_reward" in after
    lines = [f"evaluation reward{' (held-out conditions)' if held_out else ''} {_number(before['reward'])} -> "
             f"{_number(after['reward'])} after {summary['steps']} steps ({summary['samples']} samples, "
             f"{summary['wall_clock'] / 60:.1f} min; stopped: {summary['stopped']})"]
    if held_out:
        lines.append(f"evaluation reward (training conditions) {_number(before['seen_reward'])} -> "
                     f"{_number(after['seen_reward'])}")
    lines += describe_lines({**{f"before_{k}": v for k, v in before.items()},
                             **{f"after_{k}": v for k, v in after.items()}}, "before_", "after_")
    if summary.get("skipped_steps"):
        lines.append(f"fp16 loss scaling skipped {summary['skipped_steps']} step(s) whose gradient overflowed")
    if "digits_fd" in after and "digits_fd" in before:
        lines.append(f"digits-FD {before['digits_fd']:.2f} -> {after['digits_fd']:.2f}, "
                     f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
                     f"diversity {before['diversity']:.2f} -> {after['diversity']:.2f}")
    if "judge_accuracy" in after and "judge_accuracy" in before:
        lines.append(f"held-out judge (never a reward) reads the conditioned class: "
                     f"{before['judge_accuracy']:.3f} -> {after['judge_accuracy']:.3f}")
    if "motion_accuracy" in after and "motion_accuracy" in before:
        lines.append(f"motion (videos moving in their conditioned direction): {before['motion_accuracy']:.3f} -> "
                     f"{after['motion_accuracy']:.3f}; ink {before['ink']:.2f} -> {after['ink']:.2f}")
    lines += panel_change_lines(before, after)
    lines += [f"run directory: {out}",
              f"  trained {summary['target']}: {out / 'final'} (float32)",
              f"  evaluation samples: {out / 'eval' / 'before.safetensors'}, {out / 'eval' / 'after.safetensors'}",
              f"  curves: {out / 'reward_vs_time.png'}, {out / 'metrics.jsonl'}, {out / 'eval.jsonl'}"]
    return "\n".join(lines)


def _number(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value:.4f}"
