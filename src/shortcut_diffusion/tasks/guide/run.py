"""``sdo guide``: training-free guidance (FreeDoM) into a run directory, for comparison with ``sdo latent``.

The run directory holds ``config.json``, ``summary.json`` (the reward of the plain samples of the
same noise and of the guided ones, seconds, network calls, and on the testbed the classifier's and
the held-out judge's readings and the judge panel's reports ``panel`` and ``panel_start``),
``before_after.png`` (video models: a frame grid, with ``videos/before_XX.gif`` and
``videos/after_XX.gif``, ``.mp4`` too with PyAV) and ``final.safetensors`` (``images``,
``start_images``, ``latents``, ``rewards``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shortcut_diffusion.io import reporting, rundir
from shortcut_diffusion.io.video import save_before_after
from shortcut_diffusion.options.parsing import resolve_device
from shortcut_diffusion.tasks.generate import reward_labels, sample_images
from shortcut_diffusion.tasks.guide.freedom import GuidedResult, freedom_sample
from shortcut_diffusion.tasks.guide.config import GuideConfig
from shortcut_diffusion.io.interrupts import interrupted_fields
from shortcut_diffusion.tasks.context import build_context
from shortcut_diffusion.rewards.held_out import describe_lines, eval_rewards, score, start_final
from shortcut_diffusion.tasks.panel import panel_lines, panel_summary


def run_guide(config: GuideConfig) -> tuple[GuidedResult, Path]:
    config.check()
    device = resolve_device(config.device)
    with rundir.claimed(config.out, "guide", overwrite=config.overwrite) as out:
        context = build_context(config, batch=config.batch, device=device, progress=config.progress)
        model, labels, reward, scheduler = context.model, context.labels, context.reward, context.scheduler
        held_out = eval_rewards(config.eval_reward, model, allow_code=config.allow_code)
        noise = torch.randn((config.batch, *model.sample_shape), generator=torch.Generator().manual_seed(config.seed))
        reporting.write_json(out / "config.json", {**config.as_dict(), "device": str(device)})
        precision = context.precision
        start = sample_images(model, noise, labels, steps=config.steps, guidance=config.guidance, scheduler=scheduler,
                              seed=config.seed + 1, step_kwargs=config.step_kwargs, precision=precision)
        result = freedom_sample(model, noise.to(device), labels, reward, steps=config.steps, scale=config.scale,
                                travel=config.travel, travel_window=tuple(config.travel_window), scheduler=scheduler,
                                guidance=config.guidance, seed=config.seed + 1, step_kwargs=config.step_kwargs,
                                precision=precision, progress=config.progress)
        with torch.no_grad():
            start_rewards = reward(start.to(device), reward_labels(labels, device)).cpu()
        scored = start_final(score(held_out, start.to(device), reward_labels(labels, device)),
                             score(held_out, result.images.to(device), reward_labels(labels, device)))
        _write(out, model, labels, start, start_rewards, result, scored, config.reward)
        return result, out


def _write(out: Path, model, labels: list, start: torch.Tensor, start_rewards: torch.Tensor, result: GuidedResult,
           held_out: dict, spec: str) -> None:
    reporting.save_tensors(out / "final.safetensors", {"images": result.images, "start_images": start,
                                                        "latents": result.latents, "rewards": result.rewards})
    save_before_after(out, start, result.images)
    summary = {"start_reward": float(start_rewards.mean()), "final_reward": float(result.rewards.mean()), **held_out,
               "seconds": result.seconds, "network_calls": result.network_calls, "stopped": result.stopped,
               **interrupted_fields(result.interrupt)}
    for name, network in (("", model.classifier), ("judge_", model.judge)):
        if network is not None:
            with torch.no_grad():
                summary[f"{name}final_predicted"] = network(result.images.to(model.device)).argmax(1).tolist()
                summary[f"{name}start_predicted"] = network(start.to(model.device)).argmax(1).tolist()
    summary.update(panel_summary(model, spec, labels, result.images, start))
    reporting.write_json(out / "summary.json", summary)


def describe(result: GuidedResult, out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    lines = [f"reward {summary['start_reward']:.3f} (plain samples of the same noise) -> {summary['final_reward']:.3f} "
             f"(guided; {summary['seconds']:.1f} s, {summary['network_calls']} network calls with grad)"]
    lines += describe_lines(summary)
    if "final_predicted" in summary:
        lines.append(f"classifier: before {summary['start_predicted']} after {summary['final_predicted']}")
    if "judge_final_predicted" in summary:
        lines.append(f"held-out judge (never a reward): before {summary['judge_start_predicted']} after "
                     f"{summary['judge_final_predicted']}")
    lines += panel_lines(summary)
    lines += [f"run directory: {out}", f"  before/after grid: {out / 'before_after.png'}"]
    return "\n".join(lines)


__all__ = ["GuideConfig", "describe", "run_guide"]
