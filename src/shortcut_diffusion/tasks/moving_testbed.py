"""``sdo train-testbed --video``: the moving-digits video model from a seed.

Epsilon-prediction DDPM training (1,000 steps, cosine schedule, as the digits testbed) of a
:class:`~shortcut_diffusion.models.testbed.moving.network.FrameStackUNet` and its condition table
(class x direction, plus the null row, dropped in with probability ``cond_dropout`` for
classifier-free guidance) on moving digits drawn afresh every step from the training split
(:func:`~shortcut_diffusion.models.testbed.moving.data.draw`); AdamW, warm-up then cosine decay,
the EMA of the weights is saved with a DDIM scheduler. The classifier, judge and panel are the
bundled digits testbed's (they read each frame), not retrained.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from shortcut_diffusion.models.testbed.config import TrainTestbedConfig, moving_directory
from shortcut_diffusion.models.testbed.moving import data
from shortcut_diffusion.models.testbed.moving.model import NULL_ROW, NUM_CLASSES, MovingDigitsModel
from shortcut_diffusion.models.testbed.moving.network import FrameStackUNet
from shortcut_diffusion.tasks.testbed_training import fit, sampling_scheduler


def train_video(config: TrainTestbedConfig, progress: bool = True) -> tuple[FrameStackUNet, nn.Embedding, list[float]]:
    """The EMA network and condition table after ``config.steps`` steps, and the losses."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    if config.init is not None:
        network, embeddings = initial_weights(config)
    else:
        network = FrameStackUNet(config.channels, layers_per_block=config.layers_per_block)
        embeddings = nn.Embedding(NULL_ROW + 1, network.emb_dim)
        nn.init.normal_(embeddings.weight, std=1.0)

    def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        batch = data.draw("train", config.batch, gen)
        rows = batch.labels + NUM_CLASSES * batch.directions
        rows[torch.rand(config.batch, generator=gen) < config.cond_dropout] = NULL_ROW
        return data.to_latent(batch.videos), rows

    def predict(xt: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return network(xt, t, embeddings(rows))

    (ema_net, ema_emb), losses = fit(config, [network, embeddings], predict, draw, gen, desc="moving-digits",
                                     progress=progress)
    return ema_net, ema_emb, losses


def initial_weights(config: TrainTestbedConfig) -> tuple[FrameStackUNet, nn.Embedding]:
    """``--init``: trainable copies of a saved model's network and condition table (their widths
    are checked with the options, :meth:`TrainTestbedConfig.init_training`)."""
    from shortcut_diffusion.models.testbed.moving.model import load_moving_digits

    saved = load_moving_digits(moving_directory(config.init))
    network = copy.deepcopy(saved.unet).train().requires_grad_(True)
    embeddings = nn.Embedding.from_pretrained(saved.embeddings.weight.detach().clone(), freeze=False)
    return network, embeddings


def train_video_testbed(config: TrainTestbedConfig, progress: bool = True,
                        log: Optional[Callable[[str], None]] = print) -> MovingDigitsModel:
    """Train, evaluate (``eval_per_class`` videos per class) and save the moving-digits model."""
    from shortcut_diffusion.models.testbed.moving.model import load_moving_digits

    if config.threads:
        torch.set_num_threads(config.threads)
    history = config.init_training() if config.init is not None else None  # read before an hour of training
    start = time.process_time()
    network, embeddings, losses = train_video(config, progress)
    info = {
        "objective": "diffusion",
        "training": asdict(config),
        **({"init_training": history} if history is not None else {}),
        "final_loss_mean_last_500": sum(losses[-500:]) / max(1, len(losses[-500:])),
        "train_cpu_seconds": round(time.process_time() - start, 1),
        "torch_threads": torch.get_num_threads(),
    }
    model = MovingDigitsModel(network, embeddings, sampling_scheduler("diffusion"), guidance_scale=config.guidance,
                              info=info)
    model.save(config.out)
    model = load_moving_digits(config.out)
    if config.eval_per_class:
        from shortcut_diffusion.models.testbed.moving.frames import evaluate_video_model

        model.info["metrics"] = evaluate_video_model(model, config.eval_per_class, seed=config.seed)
        model.save(config.out)
    if log:
        log(json.dumps({k: model.info[k] for k in ("final_loss_mean_last_500", "train_cpu_seconds", "metrics")
                        if k in model.info}, indent=2))
        log(f"saved to {Path(config.out).resolve()}")
    return model
