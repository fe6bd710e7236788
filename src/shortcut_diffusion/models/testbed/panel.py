"""What the judge panel (:mod:`.judges`) says of samples, with two measures no judge gives.

- **Panel**: each judge's reading; ``agreement`` (the fraction of samples every judge reads as
  the same class); ``read_by_all`` (how many samples every judge reads as their target class:
  the only count that may be reported as "read as K").
- **Realism**: each sample's Euclidean pixel distance to the nearest real digit of its target
  class (training split), divided by the median nearest-neighbour distance among the real
  training digits of that class (each to its nearest other). Real held-out digits sit near 1x,
  noise far above; ``realism`` is the median ratio. Also the digits-FD of the samples against
  the held-out digits of their target classes (:func:`.metrics.digits_fd`; from two samples up).
- **Saturation**: the fraction of each sample's pixels at the rails, ``|x| > 0.95``
  (``saturation``: the mean over samples; ``saturation_real``: the same for the real training
  digits of the target classes, the level to compare with).

The target of a run is the class its reward asks for (``digit-class:K``, ``adversarial:K``),
else the conditioned class (:func:`shortcut_diffusion.tasks.panel.reward_target`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from shortcut_diffusion.models.testbed import data

RAIL = 0.95


def saturation(images: torch.Tensor) -> torch.Tensor:
    """The fraction of each image's pixels with ``|x| > 0.95``."""
    return (images.detach().float().cpu().abs() > RAIL).flatten(1).float().mean(1)


@lru_cache(maxsize=1)
def _real_by_class() -> tuple[list[torch.Tensor], torch.Tensor]:
    """The training digits of each class (flattened) and each class's median nearest-neighbour distance."""
    train = data.load("train")
    real = [train.images[train.labels == k].flatten(1) for k in range(10)]
    scales = []
    for rows in real:
        distances = torch.cdist(rows, rows)
        distances.fill_diagonal_(float("inf"))
        scales.append(distances.min(1).values.median())
    return real, torch.stack(scales)


def realism(images: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """Each image's distance to the nearest training digit of its target class, over that class's
    median nearest-neighbour distance among training digits (1x: as close as real digits are)."""
    real, scales = _real_by_class()
    flat = images.detach().float().cpu().flatten(1)
    return torch.stack([torch.cdist(row[None], real[k]).min() / scales[k] for row, k in zip(flat, target)])


def panel_report(model: Any, images: torch.Tensor, target: Union[int, Sequence[int]]) -> Optional[dict[str, Any]]:
    """The panel's readings of ``images`` and their realism and saturation, or None when the model
    has no panel. ``target``: one class for every image, or one per image."""
    panel = model.panel
    if panel is None or not len(images):
        return None
    if images.dim() == 5:  # videos: every frame's crop, summed up per video
        from shortcut_diffusion.models.testbed.moving.frames import frame_panel_report

        return frame_panel_report(model, images, [int(target)] * len(images) if isinstance(target, int) else target)
    target = [int(target)] * len(images) if isinstance(target, int) else [int(k) for k in target]
    predicted = panel.predict(images)
    readings = np.stack(list(predicted.values()))  # judges x samples
    agreed = (readings == readings[0]).all(0)
    hits = readings == np.array(target)
    ratios, sat = realism(images, target), saturation(images)
    classes = sorted(set(target))
    train = data.load("train")
    report = {
        "judges": list(predicted),
        "target": target,
        "predicted": {name: reading.tolist() for name, reading in predicted.items()},
        "read_by_judge": {name: int(hit.sum()) for name, hit in zip(predicted, hits)},
        "read_by_all": int(hits.all(0).sum()),
        "count": len(target),
        "agreement": float(agreed.mean()),
        "consensus": [int(r) if a else None for r, a in zip(readings[0], agreed)],
        "realism": float(ratios.median()),
        "realism_per_sample": ratios.tolist(),
        "saturation": float(sat.mean()),
        "saturation_per_sample": sat.tolist(),
        "saturation_real": float(saturation(train.images[torch.isin(train.labels, torch.tensor(classes))]).mean()),
        "digits_fd": None,
    }
    if len(images) >= 2:
        from shortcut_diffusion.models.testbed.metrics import digits_fd

        report["digits_fd"] = digits_fd(model.classifier, images.detach().float(), digits=classes)
    return report


def panel_line(report: dict[str, Any]) -> str:
    """One line: ``panel (3 judges, never rewards): 7/8 read as 7 by all; realism 1.6x; saturation 62%``."""
    classes = sorted(set(report["target"]))
    goal = f"as {classes[0]}" if len(classes) == 1 else "as their target class"
    return (f"panel ({len(report['judges'])} judges, never rewards): {report['read_by_all']}/{report['count']} read "
            f"{goal} by all; realism {report['realism']:.1f}x; saturation {report['saturation']:.0%}")


def panel_scalars(report: Optional[dict[str, Any]], prefix: str = "panel_") -> dict[str, float]:
    """The report's numbers as flat metrics (fractions of the samples), for metrics rows."""
    if report is None:
        return {}
    row = {f"{prefix}{name}_accuracy": n / report["count"] for name, n in report["read_by_judge"].items()}
    row.update({f"{prefix}read_by_all": report["read_by_all"] / report["count"], f"{prefix}agreement": report["agreement"],
                "realism": report["realism"], "saturation": report["saturation"]})
    return row
