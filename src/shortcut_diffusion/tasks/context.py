"""The run context: what every command sets up before its own work, built once from its options.

A command's config composes the option groups of :mod:`shortcut_diffusion.options.groups`;
:func:`build_context` turns them, in one fixed order, into the loaded model on its device (the
CPU thread policy applied), the precision, the conditions checked and cycled over the batch, the
reward and the scheduler. ``sdo latent``, ``guide``, ``finetune``, ``gradcheck`` and ``bench``
all start from it, so the same options give every command the same model, labels, reward and
scheduler.

>>> context = build_context(config, batch=config.batch)  # doctest: +SKIP
>>> context.model, context.labels, context.reward, context.scheduler  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.models.loading import apply_thread_policy, load_model
from shortcut_diffusion.options.groups import ConditionOptions, MemoryOptions, ModelOptions, RewardOptions
from shortcut_diffusion.options.parsing import resolve_device
from shortcut_diffusion.precision import Precision
from shortcut_diffusion.rewards import get_reward, resolve_reward_spec
from shortcut_diffusion.sampling.schedulers import scheduler_for


@dataclass
class RunContext:
    """One run's model and what it samples with, built by :func:`build_context`."""

    device: torch.device
    model: DiffusionModel
    precision: Precision
    conditions: list
    """The conditions of the options (classes or prompts), checked against the model, in order."""
    labels: list
    """``conditions`` cycled over the batch (the conditions themselves when no batch is given)."""
    reward_spec: str
    """The reward spec, ``auto`` resolved for the model."""
    reward: Any
    scheduler: Any

    def apply_memory_options(self, options: MemoryOptions) -> None:
        """The pipelines' memory options (VAE slicing, tiling and checkpointing, attention slicing,
        frame-chunked decoding)."""
        self.model.memory_options(vae_slicing=options.vae_slicing, vae_checkpointing=options.vae_checkpointing,
                                  attention_slicing=options.attention_slicing, vae_tiling=options.vae_tiling,
                                  decode_chunk=options.decode_chunk)


def open_model(options: ModelOptions, device: Optional[torch.device] = None, *, progress: bool = True) -> DiffusionModel:
    """The model of ``options`` loaded on ``device`` (default: ``--device`` resolved) with its load
    options, and the CPU thread policy applied."""
    device = resolve_device(options.device) if device is None else device
    model = load_model(options.model, device=device, progress=progress, **options.load_options())
    apply_thread_policy(model, options.threads)
    return model


def cycled(conditions: list, batch: int) -> list:
    """``conditions`` repeated in order over ``batch`` samples."""
    return [conditions[i % len(conditions)] for i in range(batch)]


def model_conditions(options: ConditionOptions, model: DiffusionModel) -> list:
    """The conditions of ``options`` for ``model``, checked."""
    items, source = options.condition_items(model.condition_kind)
    return model.labels_from(items, source)


def build_reward(options: RewardOptions, model: DiffusionModel, seed: int) -> tuple[str, Any]:
    """The reward of ``options`` for ``model`` (``auto`` resolved), with its views drawn from ``seed``."""
    spec = resolve_reward_spec(options.reward, model)
    return spec, get_reward(spec, shape=model.image_shape, model=model, augment=options.reward_augment,
                            views=options.reward_views, seed=seed, allow_code=options.allow_code,
                            frames=options.reward_frames)


def build_context(options: Any, *, batch: Optional[int], device: Optional[torch.device] = None,
                  progress: bool = True, model: Optional[DiffusionModel] = None, steps: Optional[int] = None,
                  scheduler: Optional[str] = None) -> RunContext:
    """The run context of ``options``, a config composing :class:`ModelOptions`,
    :class:`ConditionOptions`, :class:`RewardOptions` and the sampling options (``scheduler``,
    ``steps``; ``steps`` and ``scheduler`` given here win), with a ``seed``.

    In order: the model (``model`` when already loaded, else :func:`open_model` on ``device``,
    default ``--device`` resolved), the conditions cycled over ``batch``, the reward, the scheduler
    (refused at once when it cannot sample the steps). Nothing here draws from torch's global
    random generator.
    """
    device = resolve_device(options.device) if device is None else device
    model = open_model(options, device, progress=progress) if model is None else model
    conditions = model_conditions(options, model)
    labels = list(conditions) if batch is None else cycled(conditions, batch)
    spec, reward = build_reward(options, model, options.seed)
    steps = options.steps if steps is None else steps
    chosen = scheduler_for(model, options.scheduler if scheduler is None else scheduler, steps=steps)
    return RunContext(device, model, Precision(options.dtype, device), conditions, labels, spec, reward, chosen)
