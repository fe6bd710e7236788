"""The judge panel in run summaries (``sdo latent``/``demo``, ``sdo guide``, fine-tuning evaluations).

Only models with a panel (the digits testbed, :mod:`shortcut_diffusion.models.testbed.panel`) get
one; for every other model these add nothing.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from shortcut_diffusion.rewards.combine import parse_weighted

TARGET_REWARDS = ("digit-class", "adversarial")
"""The rewards that name the class a sample should be read as."""


def reward_target(spec: Any, labels: Sequence[Any]) -> list[int]:
    """The class each sample should be read as: K of a ``digit-class:K``/``adversarial:K`` reward
    (also as the only class-naming term of a weighted sum), else its conditioned class."""
    specs = [str(spec)]
    weighted = parse_weighted(str(spec)) if isinstance(spec, str) else None
    if weighted is not None:
        specs = [term for term, _ in weighted[0]]
    classes = set()
    for term in specs:
        name, _, arg = term.partition(":")
        if name in TARGET_REWARDS and arg.split(",")[0].strip().isdigit():
            classes.add(int(arg.split(",")[0]))
    if len(classes) == 1:
        return [classes.pop()] * len(labels)
    return [int(label) for label in labels]


def panel_summary(model: Any, spec: Any, labels: Sequence[Any], images: torch.Tensor,
                  start_images: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """``panel`` (the report on ``images``) and ``panel_start`` (on ``start_images``) for a
    summary, judged against the reward's target class; empty when ``model`` has no panel."""
    if model.panel is None:
        return {}
    from shortcut_diffusion.models.testbed.panel import panel_report

    target = reward_target(spec, labels)
    summary = {"panel": panel_report(model, images, target)}
    if start_images is not None:
        summary["panel_start"] = panel_report(model, start_images, target)
        if images.dim() == 5:  # videos: how far the motion strays from the start run's
            from shortcut_diffusion.models.testbed.moving.motion import motion_deviation

            summary["motion"] = motion_deviation(images, start_images)
    return summary


def panel_lines(summary: dict[str, Any]) -> list[str]:
    """The summary's panel as one printed line (with the start images' numbers), or none."""
    final, start = summary.get("panel"), summary.get("panel_start")
    if final is None:
        return []
    from shortcut_diffusion.models.testbed.panel import panel_line

    line = panel_line(final)
    if start is not None:
        line += (f" (before: {start['read_by_all']}/{start['count']}; realism {start['realism']:.1f}x; "
                 f"saturation {start['saturation']:.0%})")
    motion = summary.get("motion")
    if motion is None:
        return [line]
    return [line.replace(" read as", " read in every frame as", 1),
            f"motion: displacement track within {motion['motion_tolerance']:g} px of the start run's for "
            f"{motion['motion_within_tolerance']:.0%} of the videos (deviation mean {motion['motion_deviation']:.2f} px, "
            f"max {motion['motion_deviation_max']:.2f} px)"]


def panel_change_lines(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Two evaluation rows' panel numbers (:func:`~shortcut_diffusion.models.testbed.panel.panel_scalars`)
    as one printed line, or none."""
    if "panel_read_by_all" not in before or "panel_read_by_all" not in after:
        return []
    judges = sum(key.startswith("panel_") and key.endswith("_accuracy") for key in after)
    return [f"panel ({judges} judges, never rewards) reads the target class by all: {before['panel_read_by_all']:.3f} -> "
            f"{after['panel_read_by_all']:.3f}; realism {before['realism']:.2f}x -> {after['realism']:.2f}x; "
            f"saturation {before['saturation']:.0%} -> {after['saturation']:.0%}"]
