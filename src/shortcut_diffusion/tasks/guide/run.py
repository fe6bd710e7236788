"""``sdo guide``: training-free guidance (FreeDoM) into a run directory, for comparison with ``sdo latent``.

The run directory holds ``config.json``, ``summary.json`` (the reward of the plain samples of the
same noise and of the guided ones, seconds, network calls, and on the testbed the classifier's and
the held-out judge's readings and the judge panel's reports ``panel`` and ``panel_start``),
``before_after.png`` and ``final.safetensors`` (``images``, ``start_images``, ``latents``, ``rewards``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shortcut_diffusion.io import reporting, rundir
from shortcut_diffusion.options.parsing import resolve_device
from shortcut_diffusion.tasks.generate import reward_labels, sample_images
from shortcut_diffusion.tasks.guide.freedom import GuidedResult, freedom_sample
from shortcut_diffusion.tasks.guide.config import GuideConfig
from shortcut_diffusion.io.interrupts import interrupted_fields
from shortcut_diffusion.models.loading import apply_thread_policy, load_model
from shortcut_diffusion.precision import Precision
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.sampling.schedulers import scheduler_for
from shortcut_diffusion.tasks.panel import panel_lines, panel_summary


def run_guide(config: GuideConfig) -> tuple[GuidedResult, Path]:
    config.check()
    device = resolve_device(config.device)
    with rundir.claimed(config.out, "guide", overwrite=config.overwrite) as out:
        model = load_model(config.model, device=device, progress=config.progress, **config.load_options())
        apply_thread_policy(model, config.threads)
        items, source = config.condition_items(model.condition_kind)
        conditions = model.labels_from(items, source)
        labels = [conditions[i % len(conditions)] for i in range(config.batch)]
        reward = get_reward(config.reward, shape=model.image_shape, model=model, augment=config.reward_augment,
                            views=config.reward_views, seed=config.seed,
                            allow_code=config.allow_code)
        scheduler = scheduler_for(model, config.scheduler, steps=config.steps)
        noise = torch.randn((config.batch, *model.sample_shape), generator=torch.Generator().manual_seed(config.seed))
        reporting.write_json(out / "config.json", {**config.as_dict(), "device": str(device)})
        precision = Precision(config.dtype, device)
        start = sample_images(model, noise, labels, steps=config.steps, guidance=config.guidance, scheduler=scheduler,
                              seed=config.seed + 1, step_kwargs=config.step_kwargs, precision=precision)
        result = freedom_sample(model, noise.to(device), labels, reward, steps=config.steps, scale=config.scale,
                                travel=config.travel, travel_window=tuple(config.travel_window), scheduler=scheduler,
                                guidance=config.guidance, seed=config.seed + 1, step_kwargs=config.step_kwargs,
                                precision=precision, progress=config.progress)
        with torch.no_grad():
            start_rewards = reward(start.to(device), reward_labels(labels, device)).cpu()
        _write(out, model, labels, start, start_rewards, result, config.reward)
        return result, out


def _write(out: Path, model, labels: list, start: torch.Tensor, start_rewards: torch.Tensor, result: GuidedResult,
           spec: str) -> None:
    reporting.save_tensors(out / "final.safetensors", {"images": result.images, "start_images": start,
                                                        "latents": result.latents, "rewards": result.rewards})
    reporting.save_grid(out / "before_after.png", [start, result.images])
    summary = {"start_reward": float(start_rewards.mean()), "final_reward": float(result.rewards.mean()),
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
    if "final_predicted" in summary:
        lines.append(f"classifier: before {summary['start_predicted']} after {summary['final_predicted']}")
    if "judge_final_predicted" in summary:
        lines.append(f"held-out judge (never a reward): before {summary['judge_start_predicted']} after "
                     f"{summary['judge_final_predicted']}")
    lines += panel_lines(summary)
    lines += [f"run directory: {out}", f"  before/after grid: {out / 'before_after.png'}"]
    return "\n".join(lines)


__all__ = ["GuideConfig", "describe", "run_guide"]
