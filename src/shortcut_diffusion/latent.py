"""``sdo latent`` and ``sdo demo``: a latent-optimization run and its run directory.

The run directory holds ``config.json`` (everything needed to reproduce, seeds included),
``metrics.jsonl`` (one line per iteration: iter, reward, loss, seconds, saved_bytes, ...),
``reward_curve.png``, ``grid_XXXX.png`` (start row vs current row every ``grid_every``
iterations), ``before_after.png`` and ``final.safetensors`` (``latents`` and ``images``, NCHW in
[-1, 1]; also ``start_images``, ``rewards``, ``labels``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import reporting, rundir
from .config import resolve_device
from .errors import UsageError
from .estimators import get_estimator
from .images import read_image
from .inversion import ddim_invert
from .models import conditioning, denoiser_of, image_shape, load_model
from .optimize import PRECISIONS, LatentResult, check_latent_options, default_prior_weight, optimize_latent
from .rewards import get_reward
from .schedulers import SCHEDULERS, scheduler_for

ARTIFACTS = ("config.json", "metrics.jsonl", "summary.json", "reward_curve.png", "grid_*.png", "before_after.png",
             "final.safetensors")
"""What a latent run writes (what ``--overwrite`` may remove)."""


@dataclass
class LatentConfig:
    model: str = field(default="digits", metadata={"help": "built-in model name or a saved model directory"})
    reward: str = field(default="digit-class:7", metadata={"help": "reward name[:arg]"})
    cond: list[int] = field(default_factory=lambda: [1], metadata={"help": "conditioning classes, cycled over the batch (class-conditional models)"})
    prompt: list[str] = field(default_factory=list, metadata={"help": "prompts, cycled over the batch (text-to-image pipelines)"})
    negative_prompt: Optional[str] = field(default=None, metadata={"help": "negative prompt (the unconditional branch of CFG)"})
    height: Optional[int] = field(default=None, metadata={"help": "image height for pipelines (default: the model's)"})
    width: Optional[int] = field(default=None, metadata={"help": "image width for pipelines (default: the model's)"})
    dtype: str = field(default="fp32", metadata={"help": "pipeline weights' dtype (the optimized latent stays fp32)", "choices": ["fp32", "fp16", "bf16"]})
    offload_text_encoders: bool = field(default=True, metadata={"help": "pipelines: move the text encoders to the CPU once the prompts are encoded"})
    vae_slicing: bool = field(default=False, metadata={"help": "pipelines: decode one image at a time"})
    vae_checkpointing: bool = field(default=False, metadata={"help": "pipelines: gradient checkpointing in the VAE decoder"})
    attention_slicing: bool = field(default=False, metadata={"help": "pipelines: attention slicing (less memory, slower)"})
    batch: int = field(default=8, metadata={"help": "latents optimized at once"})
    steps: int = field(default=50, metadata={"help": "sampling steps"})
    warmup: int = field(default=0, metadata={"help": "steps run without grad before the optimized latent"})
    init: str = field(default="noise", metadata={"help": "noise, or invert:REF (DDIM inversion of a data-set index or an image file)"})
    estimator: str = field(default="sdo", metadata={"help": "gradient estimator spec"})
    scheduler: str = field(default="auto", metadata={"help": "scheduler (auto: the model's own)", "choices": ["auto", *SCHEDULERS]})
    reward_augment: list[str] = field(default_factory=list, metadata={"help": "average the reward over random views: crop, cutout, translation, color"})
    reward_views: int = field(default=4, metadata={"help": "views per image with --reward-augment"})
    eta: Optional[float] = field(default=None, metadata={"help": "DDIM eta (stochastic DDIM when > 0)"})
    guidance: Optional[float] = field(default=None, metadata={"help": "classifier-free guidance scale (default: the model's)"})
    iters: int = field(default=30, metadata={"help": "optimization iterations"})
    lr: float = field(default=0.15, metadata={"help": "Adam learning rate"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas"})
    clip_grad: Optional[float] = field(default=None, metadata={"help": "clip the gradient norm to this value"})
    prior_weight: Optional[float] = field(default=None, metadata={"help": "weight of the Gaussian (chi) prior on the initial noise (default: 100 when the initial noise is optimized, else 0)"})
    proximity_weight: float = field(default=0.0, metadata={"help": "weight of the pixel distance to the starting samples"})
    precision: str = field(default="fp32", metadata={"help": "network precision", "choices": list(PRECISIONS)})
    seed: int = field(default=0, metadata={"help": "seed of the noise and the estimator"})
    grid_every: int = field(default=10, metadata={"help": "write a start-vs-current grid every k iterations (0: never)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    out: str = field(default="runs/latent", metadata={"help": "run directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier sdo latent run in --out (only the files sdo wrote are removed)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def _labels(config: LatentConfig, model: Any):
    """Class indices (class-conditional models) or prompts (pipelines), cycled over the batch."""
    if getattr(model, "family", None) == "pixel":
        return [""] * config.batch
    if not hasattr(model, "num_classes"):
        if not config.prompt:
            raise UsageError("--prompt is required for a text-to-image model")
        return [config.prompt[i % len(config.prompt)] for i in range(config.batch)]
    num_classes = model.num_classes
    if not config.cond:
        raise UsageError("--cond needs at least one class")
    for c in config.cond:
        if not 0 <= c < num_classes:
            raise UsageError(f"conditioning class {c} is out of range 0..{num_classes - 1}")
    return torch.tensor([config.cond[i % len(config.cond)] for i in range(config.batch)])


def _init_image(ref: str, model: Any, batch: int) -> torch.Tensor:
    """The image to invert: a data-set index (testbed) or an image file of the model's size."""
    channels, height, width = model.sample_shape
    if ref.isdigit():
        from .testbed import data

        image = data.digit_image(int(ref))
    else:
        image = read_image(ref, channels=channels, size=(height, width))
    return image[None].expand(batch, -1, -1, -1)


def run_latent(config: LatentConfig) -> tuple[LatentResult, Path]:
    # Validate everything that can be validated before loading or sampling anything.
    optimizes_noise = config.warmup == 0 and config.init == "noise"
    check_latent_options(steps=config.steps, warmup=config.warmup, iters=config.iters, lr=config.lr,
                         batch=config.batch, prior_weight=default_prior_weight(config.prior_weight, optimizes_noise),
                         proximity_weight=config.proximity_weight, optimizes_noise=optimizes_noise)
    if config.init != "noise" and not config.init.startswith("invert:"):
        raise UsageError(f"--init must be noise or invert:REF, got {config.init!r}")
    if len(config.betas) != 2:
        raise UsageError(f"--betas needs two values, got {config.betas}")
    estimator = get_estimator(config.estimator, seed=config.seed)
    device = resolve_device(config.device)
    with rundir.claimed(config.out, "latent", ARTIFACTS, overwrite=config.overwrite) as out:
        return _run_latent(config, estimator, device, out)


def _run_latent(config: LatentConfig, estimator: Any, device: torch.device, out: Path) -> tuple[LatentResult, Path]:
    model = load_model(config.model, height=config.height, width=config.width, guidance_scale=config.guidance,
                       negative_prompt=config.negative_prompt, dtype=config.dtype).to(device)
    labels = _labels(config, model)
    reward = get_reward(config.reward, shape=image_shape(model), model=model, augment=config.reward_augment,
                        views=config.reward_views, seed=config.seed)
    scheduler = scheduler_for(model, config.scheduler)
    if hasattr(model, "pipe"):
        model.memory_options(vae_slicing=config.vae_slicing, vae_checkpointing=config.vae_checkpointing,
                             attention_slicing=config.attention_slicing)
        if labels and labels[0]:
            model.encode_prompts(labels)
            if config.offload_text_encoders and device.type != "cpu":
                model.offload_text_encoders()
    step_kwargs = {} if config.eta is None else {"eta": config.eta}
    init = None
    if config.init.startswith("invert:"):
        image = _init_image(config.init.partition(":")[2], model, config.batch).to(device)
        init = ddim_invert(denoiser_of(model, config.guidance), model.scheduler, model.encode(image),
                           steps=config.steps, start=config.warmup, cond=conditioning(model, labels))

    reporting.write_json(out / "config.json", {**asdict(config), "estimator_spec": estimator.spec,
                                               "device": str(device)})
    metrics_path = out / "metrics.jsonl"
    grid_start: dict[str, torch.Tensor] = {}

    def on_iteration(row: dict, latents: torch.Tensor, images: torch.Tensor) -> None:
        reporting.append_jsonl(metrics_path, row)
        grid_start.setdefault("images", images.clone())
        if config.grid_every and row["iter"] % config.grid_every == 0:
            reporting.save_grid(out / f"grid_{row['iter']:04d}.png", [grid_start["images"], images])

    result = optimize_latent(
        model, reward, labels, estimator=estimator, scheduler=scheduler, steps=config.steps,
        warmup=config.warmup, iters=config.iters, lr=config.lr, betas=config.betas,
        clip_grad=config.clip_grad, prior_weight=config.prior_weight,
        proximity_weight=config.proximity_weight, init=init, batch=config.batch, seed=config.seed,
        step_kwargs=step_kwargs, guidance=config.guidance, precision=config.precision,
        progress=config.progress, callback=on_iteration,
    )
    tensors = {"latents": result.latents, "images": result.images, "start_images": result.start_images,
               "rewards": result.rewards}
    if isinstance(labels, torch.Tensor):
        tensors["labels"] = labels
    reporting.save_tensors(out / "final.safetensors", tensors)
    reporting.save_grid(out / "before_after.png", [result.start_images, result.images])
    iters = [row["iter"] for row in result.history]
    reporting.plot_curves(out / "reward_curve.png", {estimator.spec: (iters, [r["reward"] for r in result.history])},
                          xlabel="iteration", ylabel=f"reward ({config.reward})", title="latent optimization")
    summary = {
        "start_reward": float(result.start_rewards.mean()),
        "final_reward": float(result.rewards.mean()),
        "stopped": result.stopped,
        "seconds_per_iter": (sum(r["seconds"] for r in result.history) / len(result.history)) if result.history else None,
    }
    if not isinstance(labels, torch.Tensor):
        summary["prompts"] = labels
    if hasattr(model, "classifier"):
        summary["final_predicted"] = model.classifier(result.images.to(device)).argmax(1).tolist()
        summary["start_predicted"] = model.classifier(result.start_images.to(device)).argmax(1).tolist()
    reporting.write_json(out / "summary.json", summary)
    return result, out


def describe(result: LatentResult, out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    lines = [f"reward {summary['start_reward']:.3f} -> {summary['final_reward']:.3f}"]
    if "final_predicted" in summary:
        lines.append(f"classifier: before {summary['start_predicted']} after {summary['final_predicted']}")
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    lines += [f"run directory: {out}",
              f"  before/after grid: {out / 'before_after.png'}",
              f"  reward curve:      {out / 'reward_curve.png'}",
              f"  metrics:           {out / 'metrics.jsonl'}",
              f"  final samples:     {out / 'final.safetensors'}"]
    return "\n".join(lines)
