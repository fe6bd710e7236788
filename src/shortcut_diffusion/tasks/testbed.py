"""``sdo train-testbed`` and ``sdo eval-testbed``: reproduce the bundled digits model from a seed,
and measure a testbed's samples.

1. The classifier: trained on the training split with shift augmentation and Gaussian noise of
   random strength (noise-robust, so its gradients are semantic rather than adversarial); its
   accuracy is measured on the held-out split.
2. The diffusion model: epsilon-prediction DDPM training (1,000 steps, cosine schedule) of a
   ``UNet2DModel`` and its class-embedding table on the training split, with the condition
   replaced by the null embedding with probability ``cond_dropout`` so classifier-free guidance
   works as in Stable Diffusion; AdamW, warm-up then cosine learning-rate decay, an EMA of the
   weights is what is saved.
   With ``objective="flow"`` the same network, conditioning and dropout learn rectified flow
   instead (as SD3 and Flux): ``x_t = (1 - t) x0 + t eps`` with ``t ~ U(0, 1)``, the network sees
   the timestep ``1000 t`` (diffusers' FlowMatchEulerDiscreteScheduler convention) and regresses
   the velocity ``eps - x0``; it is saved with that scheduler (``flow-euler``). The classifier and
   judge are then the bundled digits testbed's (they judge the same digits), not retrained.
3. The judge panel (``judges.py``): never rewards; its kNN and random-forest judges train in
   about a second (beside the held-out MLP judge, the bundled one for ``objective="flow"``).
4. Evaluation: ``eval_per_class`` samples per class with 50 steps of the model's own scheduler
   at the saved guidance scale: digits-FD against the held-out digits, conditional accuracy,
   diversity; and the same metrics for the real training digits as the reference.

Results depend on the seed and, through floating-point summation order, on the machine's thread
count; with the same seed on the same machine type the run is repeatable.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Collection, Optional

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn
from tqdm.auto import tqdm

from shortcut_diffusion.io import rundir
from shortcut_diffusion.models.testbed import data, metrics
from shortcut_diffusion.models.testbed.classifier import DigitClassifier, augment
from shortcut_diffusion.models.testbed.config import NORM_GROUPS, EvalTestbedConfig, TrainTestbedConfig  # noqa: F401 (re-exported)
from shortcut_diffusion.models.testbed.judge import train_judge
from shortcut_diffusion.models.testbed.model import NULL_CLASS, NUM_CLASSES, DigitsModel
from shortcut_diffusion.tasks.generate import sample_images
from shortcut_diffusion.tasks.testbed_training import fit, sampling_scheduler  # noqa: F401 (re-exported)


def build_unet(config: TrainTestbedConfig) -> UNet2DModel:
    depth = len(config.channels)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(config.channels),
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (depth - 1),
        up_block_types=("AttnUpBlock2D",) * (depth - 1) + ("UpBlock2D",),
        norm_num_groups=NORM_GROUPS,
        class_embed_type="identity",
    )


def train_classifier(config: TrainTestbedConfig, progress: bool = True) -> tuple[DigitClassifier, float]:
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    train, held = data.load("train"), data.load("held_out")
    classifier = DigitClassifier()
    opt = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.classifier_epochs))
    for _ in tqdm(range(config.classifier_epochs), desc="classifier", disable=not progress):
        order = torch.randperm(len(train.labels), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            x = augment(train.images[idx], gen)
            # Noise of random strength: a noise-robust classifier has smoother, more semantic
            # gradients, so rewards built on it are harder to satisfy with adversarial pixels.
            std = torch.rand(len(idx), 1, 1, 1, generator=gen) * config.classifier_noise
            x = (x + std * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
            loss = F.cross_entropy(classifier(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    classifier.eval().requires_grad_(False)
    return classifier, metrics.conditional_accuracy(classifier, held.images, held.labels)


def train_diffusion(config: TrainTestbedConfig, progress: bool = True) -> tuple[UNet2DModel, nn.Embedding, list[float]]:
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    train = data.load("train")
    unet = build_unet(config)
    embeddings = nn.Embedding(NUM_CLASSES + 1, config.channels[0] * 4)
    nn.init.normal_(embeddings.weight, std=1.0)

    def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(train.labels), (config.batch,), generator=gen)
        x0, labels = train.images[idx], train.labels[idx].clone()
        labels[torch.rand(config.batch, generator=gen) < config.cond_dropout] = NULL_CLASS
        return x0, labels

    def predict(xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return unet(xt, t, class_labels=embeddings(labels)).sample

    (ema_unet, ema_emb), losses = fit(config, [unet, embeddings], predict, draw, gen, objective=config.objective,
                                      desc=config.objective, progress=progress)
    return ema_unet, ema_emb, losses


def evaluate_model(model: DigitsModel, per_class: int, seed: int = 0, steps: int = 50,
                   guidance: Optional[float] = None) -> dict[str, dict[str, float]]:
    """The README's testbed numbers: samples of every class vs the held-out digits."""
    from shortcut_diffusion.sampling.schedulers import is_flow_matching
    from shortcut_diffusion.tasks.generate import sample_images

    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    noise = torch.randn((len(labels), *model.sample_shape), generator=torch.Generator().manual_seed(seed))
    images = sample_images(model, noise, labels.tolist(), steps=steps, guidance=guidance, seed=seed + 1, batch=500)
    train = data.load("train")
    sampler = "flow_euler" if is_flow_matching(model.scheduler) else "ddim"
    return {
        f"model_{sampler}{steps}": metrics.evaluate(model.classifier, images, labels),
        "real_train_digits": metrics.evaluate(model.classifier, train.images, train.labels),
    }


def train_testbed(config: TrainTestbedConfig, progress: bool = True, log: Optional[Callable[[str], None]] = print,
                  given: Optional[Collection[str]] = None) -> DigitsModel:
    """Train and save the testbed ``config`` names; ``given``: the options the user set, which
    ``--video``'s defaults never replace (without it: those not at their defaults)."""
    config = config.resolved(given)
    config.check()
    with rundir.claimed(config.out, "train-testbed", overwrite=config.overwrite):
        if config.video:
            from shortcut_diffusion.tasks.moving_testbed import train_video_testbed

            return train_video_testbed(config, progress, log)
        return _train_testbed(config, progress, log)


def _train_testbed(config: TrainTestbedConfig, progress: bool, log: Optional[Callable[[str], None]]) -> DigitsModel:
    if config.threads:
        torch.set_num_threads(config.threads)
    start = time.time()
    if config.objective == "flow":
        classifier, judge, info = _bundled_judges(log)
    else:
        classifier, judge, info = _trained_judges(config, progress, log)
    unet, embeddings, losses = train_diffusion(config, progress)
    info.update({
        "objective": config.objective,
        "training": asdict(config),
        "final_loss_mean_last_500": sum(losses[-500:]) / max(1, len(losses[-500:])),
        "train_seconds": None,
        "torch_threads": torch.get_num_threads(),
    })
    from shortcut_diffusion.models.testbed.judges import train_panel

    panel = train_panel(config.seed, judge)
    if log:
        log("judge panel held-out accuracy: " + ", ".join(f"{name} {entry['held_out_accuracy']:.4f}"
                                                          for name, entry in panel.info.items()))
    model = DigitsModel(unet, embeddings, sampling_scheduler(config.objective), classifier,
                        guidance_scale=config.guidance, info=info, judge=judge, panel=panel)
    if config.eval_per_class:
        info["metrics"] = evaluate_model(model, config.eval_per_class, seed=config.seed)
    info["train_seconds"] = round(time.time() - start, 1)
    model.save(config.out)
    if log:
        log(json.dumps({k: info[k] for k in ("classifier_held_out_accuracy", "metrics", "train_seconds") if k in info}, indent=2))
        log(f"saved to {Path(config.out).resolve()}")
    return model


def _trained_judges(config: TrainTestbedConfig, progress: bool,
                    log: Optional[Callable[[str], None]]) -> tuple[DigitClassifier, Optional[nn.Module], dict]:
    """The classifier and (unless ``judge_epochs`` is 0) the held-out judge, trained from the seed."""
    from shortcut_diffusion.models.testbed.judge import train_judge

    classifier, accuracy = train_classifier(config, progress)
    info: dict = {"classifier_held_out_accuracy": accuracy}
    if log:
        log(f"classifier held-out accuracy: {accuracy:.4f}")
    judge = None
    if config.judge_epochs:
        judge, info["judge_held_out_accuracy"] = train_judge(epochs=config.judge_epochs)
        if log:
            log(f"judge held-out accuracy: {info['judge_held_out_accuracy']:.4f}")
    return classifier, judge, info


def _bundled_judges(log: Optional[Callable[[str], None]]) -> tuple[DigitClassifier, Optional[nn.Module], dict]:
    """The bundled digits testbed's classifier and judge: a flow model is judged by the same
    networks as the diffusion model, so that their metrics compare."""
    from shortcut_diffusion.models.testbed.model import load_digits_model

    bundled = load_digits_model()
    keep = ("classifier_held_out_accuracy", "judge_held_out_accuracy", "judge_seed")
    info = {key: bundled.info[key] for key in keep if key in bundled.info}
    if log:
        log(f"reusing the bundled digits classifier (held-out accuracy {info['classifier_held_out_accuracy']:.4f}) "
            "and judge")
    return bundled.classifier, bundled.judge, info
