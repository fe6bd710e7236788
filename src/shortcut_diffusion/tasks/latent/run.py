"""``sdo latent`` and ``sdo demo``: a latent-optimization run and its run directory.

The run directory holds ``config.json`` (everything needed to reproduce, seeds included),
``metrics.jsonl`` (one line per iteration: iter, reward, loss, seconds, saved_bytes, ...),
``reward_curve.png``, ``grid_XXXX.png`` (start row vs current row every ``grid_every``
iterations), ``before_after.png`` (video models: each sample's frames before and after, on
two rows; with ``videos/before_XX.gif``, ``videos/after_XX.gif`` and, where PyAV is installed,
``.mp4``) and ``final.safetensors`` (``latents`` and ``images``, NCHW in
[-1, 1]; also ``start_images``, ``rewards``, ``labels``). ``loss`` is what Adam minimizes: minus
the reward summed over the batch, plus the regularizers (the Gaussian prior on the noise, the
proximity to the start), so it is on another scale than the mean ``reward``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Optional

import torch

from shortcut_diffusion.io import reporting, rundir
from shortcut_diffusion.io.video import save_before_after
from shortcut_diffusion.options.parsing import resolve_device
from shortcut_diffusion.io.images import read_image
from shortcut_diffusion.io.interrupts import deferred, interrupted_fields
from shortcut_diffusion.sampling.inversion import ddim_invert
from shortcut_diffusion.tasks.context import RunContext, build_context
from shortcut_diffusion.tasks.latent.config import PRESETS, DemoConfig, LatentConfig  # noqa: F401 (re-exported)
from shortcut_diffusion.tasks.generate import frames_to_decode
from shortcut_diffusion.tasks.memory import check_batch_fits
from shortcut_diffusion.gradients import get_method
from shortcut_diffusion.gradients.picard import with_rollout
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.tasks.latent.optimize import LatentResult, optimize_latent
from shortcut_diffusion.rewards.held_out import describe_lines, eval_rewards, start_final
from shortcut_diffusion.tasks.latent.selection import make_selection
from shortcut_diffusion.tasks.panel import panel_lines, panel_summary
from shortcut_diffusion.io.tracking import Tracker


def _init_image(ref: str, model: DiffusionModel, batch: int) -> torch.Tensor:
    """The image to invert: a data-set index (testbed) or an image file of the model's size."""
    channels, height, width = model.image_shape
    if ref.isdigit():
        from shortcut_diffusion.models.testbed import data

        image = data.digit_image(int(ref))
    else:
        image = read_image(ref, channels=channels, size=(height, width))
    return image[None].expand(batch, -1, -1, -1)


def inverted_latent(config: LatentConfig, context: RunContext) -> torch.Tensor:
    """The DDIM inversion of ``--init invert:REF`` at step ``--warmup``, in the scheduler's scale."""
    model = context.model
    image = _init_image(config.init.partition(":")[2], model, config.batch_size).to(model.device)
    with context.precision.autocast():
        latent = model.encode(image)
    return ddim_invert(model.denoiser(config.guidance), context.scheduler, latent.float(), steps=config.steps,
                       start=config.warmup, cond=model.conditioning(context.labels),
                       set_timesteps_kwargs=model.timestep_kwargs(config.steps))


def run_latent(config: LatentConfig, given: Optional[Collection[str]] = None) -> tuple[LatentResult, Path]:
    """Run ``config`` into its run directory; returns the result and the directory. ``given``: the
    options the user set (the command line's), which a preset or a demo's settings never replace
    (without it: those not at their defaults)."""
    config = config.resolved(given)
    config.check()  # everything that can be checked before loading or sampling anything
    estimator = with_rollout(get_method(config.estimator, seed=config.seed), config.rollout, config.picard_settings())
    device = resolve_device(config.device)
    with rundir.claimed(config.out, "latent", overwrite=config.overwrite) as out:
        context = build_context(config, batch=config.batch_size, device=device, progress=config.progress)
        tracker = Tracker(config.report_to, out, "latent", config.as_dict())
        result, out = _run_latent(config, estimator, context, out, tracker)
        tracker.image("before_after", out / "before_after.png", config.iters)
        tracker.close(json.loads((out / "summary.json").read_text()), config.iters)
        return result, out


def _run_latent(config: LatentConfig, estimator: Any, context: RunContext, out: Path,
                tracker: Tracker) -> tuple[LatentResult, Path]:
    model, labels, scheduler = context.model, context.labels, context.scheduler
    held_out = eval_rewards(config.eval_reward, model, allow_code=config.allow_code)
    context.apply_memory_options(config)
    model.prepare(labels)
    estimator.check(scheduler, config.steps, start=config.warmup, step_kwargs=config.step_kwargs)
    reads = None if held_out or config.proximity_weight else frames_to_decode(model, context.reward, draw=False)
    check_batch_fits(model, estimator, steps=config.steps - config.warmup, batch=config.batch_size, labels=labels,
                     guidance=config.guidance, precision=context.precision, frames=reads)
    init = inverted_latent(config, context) if config.init.startswith("invert:") else None
    if config.offload_text_encoders and model.device.type != "cpu":
        model.offload_text_encoders()
    reporting.write_json(out / "config.json", {**config.as_dict(), "batch": config.batch_size,
                                               "estimator_spec": estimator.spec, "device": str(model.device),
                                               "torch_threads": torch.get_num_threads()})
    result = optimize_latent(
        model, context.reward, labels, estimator=estimator, scheduler=scheduler, steps=config.steps,
        warmup=config.warmup, iters=config.iters, lr=config.lr, betas=config.betas,
        clip_grad=config.clip_grad or None, prior_weight=config.prior_weight,
        proximity_weight=config.proximity_weight, init=init, batch=config.batch_size, seed=config.seed,
        step_kwargs=config.step_kwargs, guidance=config.guidance, precision=context.precision,
        progress=config.progress, callback=_recorder(config, out, tracker), compile=config.compile,
        eval_rewards=held_out,
        rollout=config.rollout, picard=config.picard_settings(),
        select=make_selection(config.select, model, config.reward, labels, seed=config.seed,
                              min_reward=config.select_min_reward),
    )
    _write_results(config, model, labels, result, estimator.spec, out)
    return result, out


def _recorder(config: LatentConfig, out: Path, tracker: Tracker):
    """The per-iteration callback: a metrics row, and a start-vs-current grid every few iterations
    (both also to the tracker)."""
    start: dict[str, torch.Tensor] = {}

    def on_iteration(row: dict, latents: torch.Tensor, images: torch.Tensor) -> None:
        with deferred():  # an iteration's records are written whole, also when a signal comes
            reporting.append_jsonl(out / "metrics.jsonl", row)
            tracker.scalars(row, row["iter"])
            start.setdefault("images", images.clone())
            if config.grid_every and row["iter"] % config.grid_every == 0:
                grid = reporting.save_grid(out / f"grid_{row['iter']:04d}.png", [start["images"], images])
                tracker.image("grid", grid, row["iter"])

    return on_iteration


def _write_results(config: LatentConfig, model: DiffusionModel, labels: list, result: LatentResult, spec: str,
                   out: Path) -> None:
    tensors = {"latents": result.latents, "images": result.images, "start_images": result.start_images,
               "rewards": result.rewards}
    if model.condition_kind == "class":
        tensors["labels"] = torch.as_tensor(labels)
    reporting.save_tensors(out / "final.safetensors", tensors)
    save_before_after(out, result.start_images, result.images)
    iters = [row["iter"] for row in result.history]
    reporting.plot_curves(out / "reward_curve.png", {spec: (iters, [r["reward"] for r in result.history])},
                          xlabel="iteration", ylabel=f"reward ({config.reward})", title="latent optimization")
    summary = {
        "start_reward": float(result.start_rewards.mean()),
        "final_reward": float(result.rewards.mean()),
        **start_final(result.start_eval_rewards, result.eval_rewards),
        "stopped": result.stopped,
        **interrupted_fields(result.interrupt),
        "seconds_per_iter": (sum(r["seconds"] for r in result.history) / len(result.history)) if result.history else None,
    }
    if model.condition_kind == "prompt":
        summary["prompts"] = labels
    for name, network in (("", model.classifier), ("judge_", model.judge)):
        if network is not None:  # the reward's classifier, and the held-out judge that is never a reward
            with torch.no_grad():
                summary[f"{name}final_predicted"] = network(result.images.to(model.device)).argmax(1).tolist()
                summary[f"{name}start_predicted"] = network(result.start_images.to(model.device)).argmax(1).tolist()
    if "judge_final_predicted" in summary:
        pairs = list(zip(summary["final_predicted"], summary["judge_final_predicted"]))
        summary["judge_agreement"] = sum(a == b for a, b in pairs) / len(pairs)
    summary.update(panel_summary(model, config.reward, labels, result.images, result.start_images))
    reporting.write_json(out / "summary.json", summary)


def describe(result: LatentResult, out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    lines = [f"reward {_number(summary['start_reward'])} -> {_number(summary['final_reward'])} "
             "(mean per sample; metrics.jsonl's loss is Adam's objective: -reward summed over the batch + regularizers)"]
    lines += describe_lines(summary)
    if "final_predicted" in summary:
        lines.append(f"classifier: before {summary['start_predicted']} after {summary['final_predicted']}")
    if "judge_final_predicted" in summary:
        lines.append(f"held-out judge (never a reward): before {summary['judge_start_predicted']} after "
                     f"{summary['judge_final_predicted']} (agrees with the classifier on "
                     f"{summary['judge_agreement']:.0%})")
    lines += panel_lines(summary)
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    lines += [f"run directory: {out}",
              f"  before/after grid: {out / 'before_after.png'}",
              f"  reward curve:      {out / 'reward_curve.png'}",
              f"  metrics:           {out / 'metrics.jsonl'}",
              f"  final samples:     {out / 'final.safetensors'}"]
    return "\n".join(lines)


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"
