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
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn
from tqdm.auto import tqdm

from shortcut_diffusion.models.testbed.config import TrainTestbedConfig
from shortcut_diffusion.models.testbed.moving import data
from shortcut_diffusion.models.testbed.moving.model import NULL_ROW, NUM_CLASSES, MovingDigitsModel
from shortcut_diffusion.models.testbed.moving.network import FrameStackUNet
from shortcut_diffusion.tasks.testbed_training import ema_update, lr_lambda, sampling_scheduler, training_pair


def train_video(config: TrainTestbedConfig, progress: bool = True) -> tuple[FrameStackUNet, nn.Embedding, list[float]]:
    """The EMA network and condition table after ``config.steps`` steps, and the losses."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    network = FrameStackUNet(config.channels, layers_per_block=config.layers_per_block)
    embeddings = nn.Embedding(NULL_ROW + 1, network.emb_dim)
    nn.init.normal_(embeddings.weight, std=1.0)
    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    params = list(network.parameters()) + list(embeddings.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config))
    ema_net, ema_emb = copy.deepcopy(network).requires_grad_(False), copy.deepcopy(embeddings).requires_grad_(False)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="moving-digits", disable=not progress, mininterval=30)
    for step in bar:
        batch = data.draw("train", config.batch, gen)
        rows = batch.labels + NUM_CLASSES * batch.directions
        rows[torch.rand(config.batch, generator=gen) < config.cond_dropout] = NULL_ROW
        xt, t, target = training_pair("diffusion", data.to_latent(batch.videos), gen, noise_schedule)
        loss = F.mse_loss(network(xt, t, embeddings(rows)), target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema_update(list(ema_net.parameters()) + list(ema_emb.parameters()), params, min(config.ema, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    return ema_net.eval(), ema_emb, losses


def train_video_testbed(config: TrainTestbedConfig, progress: bool = True,
                        log: Optional[Callable[[str], None]] = print) -> MovingDigitsModel:
    """Train, evaluate (``eval_per_class`` videos per class) and save the moving-digits model."""
    from shortcut_diffusion.models.testbed.moving.model import load_moving_digits

    if config.threads:
        torch.set_num_threads(config.threads)
    start = time.process_time()
    network, embeddings, losses = train_video(config, progress)
    info = {
        "objective": "diffusion",
        "training": asdict(config),
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
