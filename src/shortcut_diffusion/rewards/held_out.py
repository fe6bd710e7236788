"""Held-out rewards (``--eval-reward SPEC``): scored on the same samples as the training reward,
never optimized.

Papers train on one reward and report others they never optimized (DRaFT and AlignProp train on
HPS or aesthetic and report PickScore, CLIP and aesthetic). Each spec is built by
:func:`~shortcut_diffusion.rewards.get_reward` with the same checks as ``--reward``, and is
reported as ``eval_reward/<spec>``: its mean over the samples, computed without grad.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

PREFIX = "eval_reward/"


def eval_rewards(specs: Sequence[str], model: Any, *, allow_code: bool = False) -> dict[str, Callable]:
    """``{"eval_reward/<spec>": reward}`` for each spec, built for ``model`` (no views: plain images)."""
    from shortcut_diffusion.rewards import get_reward

    return {f"{PREFIX}{spec}": get_reward(spec, shape=model.image_shape, model=model, allow_code=allow_code)
            for spec in specs}


@torch.no_grad()
def score(rewards: dict[str, Callable], images: torch.Tensor, labels: Any) -> dict[str, float]:
    """The mean of each held-out reward on ``images`` (no graph: nothing flows back from them)."""
    return {name: float(reward(images.detach(), labels).float().mean()) for name, reward in rewards.items()}


def start_final(start: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """Summary fields ``start_eval_reward/<spec>`` and ``final_eval_reward/<spec>``."""
    return {**{f"start_{name}": value for name, value in start.items()},
            **{f"final_{name}": value for name, value in final.items()}}


def describe_lines(summary: dict[str, Any], before: str = "start_", after: str = "final_") -> list[str]:
    """One printed line per held-out reward of ``summary``: ``before -> after``."""
    names = [key[len(after) + len(PREFIX):] for key in summary if key.startswith(after + PREFIX)]
    return [f"held-out reward {spec} (never optimized): {summary[f'{before}{PREFIX}{spec}']:.3f} -> "
            f"{summary[f'{after}{PREFIX}{spec}']:.3f}" for spec in names]
