"""Evaluation on fixed held-out noise: the same samples before, during and after fine-tuning."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from shortcut_diffusion.io import reporting
from shortcut_diffusion.io.video import frame_rows, save_videos
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.generate import reward_labels, sample_images
from shortcut_diffusion.io.tracking import Tracker
from shortcut_diffusion.rewards.held_out import eval_rewards, score
from shortcut_diffusion.tasks.panel import panel_summary

if TYPE_CHECKING:
    from shortcut_diffusion.tasks.finetune.train import FineTuning, TrainState


def eval_labels(conditions: Sequence[Any], per_class: int) -> list[Any]:
    """Every condition ``per_class`` times, in order (condition-major)."""
    return [c for c in conditions for _ in range(per_class)]


def label_index(labels: list) -> list[int]:
    """Class indices as they are; prompts as their index in order of first appearance."""
    if labels and isinstance(labels[0], str):
        order = list(dict.fromkeys(labels))
        return [order.index(label) for label in labels]
    return list(labels)


def eval_noise(model: Any, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((count, *model.sample_shape), generator=gen)


def evaluate(model: Any, reward: Callable, images: torch.Tensor, labels: Sequence[Any],
             held_out: Optional[dict[str, Callable]] = None, spec: Any = None) -> dict[str, float]:
    """Mean reward, the held-out rewards (``eval_reward/<spec>``), and the model's own metrics (on
    the digits testbed: digits-FD, conditional accuracy and diversity, from two samples up; and the
    judge panel's readings of the class that the reward ``spec`` asks for, realism and saturation:
    :func:`~shortcut_diffusion.models.testbed.panel.panel_scalars`)."""
    with torch.no_grad():
        row = {"reward": float(reward(images.to(model.device), reward_labels(labels, model.device)).mean())}
    row.update(score(held_out or {}, images.to(model.device), reward_labels(labels, model.device)))
    row.update(model.metrics(images, labels))
    report = panel_summary(model, spec, labels, images).get("panel")
    if report is not None:
        from shortcut_diffusion.models.testbed.panel import panel_scalars

        row.update(panel_scalars(report))
    return row


def evaluation_conditions(config: Any, model: Any) -> Optional[list]:
    """The held-out evaluation conditions (``--eval-prompts-file``, ``--eval-cond``), checked, or
    None to evaluate on the training conditions."""
    if config.eval_prompts_file:
        text = Path(config.eval_prompts_file).read_text()
        items, source = [line.strip() for line in text.splitlines() if line.strip()], f"--eval-prompts-file {config.eval_prompts_file}"
    elif config.eval_cond:
        items, source = list(config.eval_cond), "--eval-cond"
    else:
        return None
    return model.labels_from(items, source)


class Evaluation:
    """The evaluation of one run: fixed conditions and noise, rows in ``eval.jsonl``, grids and
    the ``before``/``after`` samples under ``eval/``."""

    def __init__(self, ft: "FineTuning", out: Path, write: bool = True, tracker: Optional[Tracker] = None):
        config = ft.config
        self.ft, self.out, self.write = ft, Path(out), write
        self.tracker = tracker if tracker is not None else Tracker("none", out, "finetune", {})
        # The evaluation scores the plain images (training may average the reward over views).

        self.reward = get_reward(config.reward, shape=ft.model.image_shape, model=ft.model,
                                 allow_code=config.allow_code, frames=config.reward_frames)
        self.held_out = eval_rewards(config.eval_reward, ft.model, allow_code=config.allow_code)
        held_out = evaluation_conditions(config, ft.model)
        self.conditions = held_out if held_out is not None else ft.conditions
        self.labels = eval_labels(self.conditions, config.eval_per_class)
        self.noise = eval_noise(ft.model, len(self.labels), config.eval_seed)
        self.seen_labels = eval_labels(ft.conditions, config.eval_per_class) if held_out is not None else None
        self.seen_noise = eval_noise(ft.model, len(self.seen_labels), config.eval_seed + 1) if held_out is not None else None

    def _samples(self, state: "TrainState", noise: torch.Tensor, labels: list, seed: int) -> torch.Tensor:
        ft, config = self.ft, self.ft.config
        swap = ft.target.swapped(state.ema) if state.ema is not None else contextlib.nullcontext()
        with swap:
            return sample_images(ft.model, noise, labels, steps=config.steps, guidance=config.guidance,
                                 scheduler=ft.scheduler, seed=seed, step_kwargs=config.step_kwargs, precision=ft.precision,
                                 compile=config.compile)

    def run(self, state: "TrainState", name: Optional[str] = None, final: bool = False) -> dict[str, Any]:
        """Evaluate the current weights on the evaluation conditions (held out from training when
        ``--eval-cond``/``--eval-prompts-file`` are given; then also on the training conditions,
        as ``seen_*`` keys)."""
        config = self.ft.config
        images = self._samples(state, self.noise, self.labels, config.eval_seed)
        row = {"step": state.step, "wall_clock": state.wall_clock, "samples": state.samples,
               **evaluate(self.ft.model, self.reward, images, self.labels, self.held_out, config.reward)}
        if self.seen_labels is not None:
            seen = self._samples(state, self.seen_noise, self.seen_labels, config.eval_seed + 1)
            row.update({f"seen_{k}": v for k, v in evaluate(self.ft.model, self.reward, seen, self.seen_labels,
                                                                     self.held_out, config.reward).items()})
        if final:
            row["final"] = True  # the exported weights (EMA or best), after the last step
        if not self.write:  # another process writes the run directory
            return row
        per = config.eval_per_class
        rows = [images[i * per : (i + 1) * per] for i in range(len(self.conditions))]
        grid = reporting.save_grid(self.out / "eval" / f"grid_step_{state.step:06d}.png", rows)
        self.tracker.image(f"eval/{name or 'grid'}", grid, state.step)
        if name:
            reporting.save_tensors(self.out / "eval" / f"{name}.safetensors",
                                   {"images": images, "labels": torch.as_tensor(label_index(self.labels))})
            if images.dim() == 5:
                self._videos(name, images)
        reporting.append_jsonl(self.out / "eval.jsonl", row)
        self.tracker.scalars(row, state.step, prefix="eval")
        return row

    def _videos(self, name: str, videos: torch.Tensor) -> None:
        """A video model's named samples as ``eval/videos/NAME_XX.gif`` (``.mp4``); after training,
        ``eval/before_after.png``: each sample's frames before and after, on two rows."""
        save_videos(self.out / "eval" / "videos", videos, prefix=name)
        before = self.out / "eval" / "before.safetensors"
        if name == "after" and before.is_file():
            from safetensors.torch import load_file

            reporting.save_grid(self.out / "eval" / "before_after.png", frame_rows(load_file(before)["images"], videos))

    def periodic(self, state: "TrainState") -> None:
        """An evaluation of the schedule; early stopping keeps the best weights."""
        row = self.run(state)
        if self.ft.config.early_stop and state.early_stop.update(row, state.step):
            state.best = ({k: v.clone() for k, v in state.ema.items()} if state.ema is not None
                          else self.ft.target.state())
