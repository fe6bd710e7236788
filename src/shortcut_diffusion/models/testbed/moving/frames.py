"""Reading moving digits frame by frame: crops, the classifier and the judges on frames, the track.

- :func:`centre_of_mass`: the ink-weighted centre (row, column) of each frame, ink being
  ``(x + 1) / 2`` (0 on the dark background, 1 at full stroke).
- :func:`crop`: each frame's 8x8 window around its digit: among the windows that hold the most
  ink, the one nearest the window centred on the centre of mass (a narrow 1 fits in several
  windows; the centre of mass picks one). Differentiable in the pixels; the window's position is
  not a function anything differentiates.
- :class:`FrameClassifier`: the digits testbed's classifier on a 16x16 frame's crop, so that every
  digits reward (``digit-class:K``, ``digit-match``, ...) scores moving-digit frames unchanged.
- :class:`FramePanel`: the digits judge panel on every frame's crop; a video is read as K by a
  judge only when every frame is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shortcut_diffusion.models.testbed.moving.data import CANVAS, DIGIT

TIE = 1e-3
"""Weight of the squared distance to the centre-of-mass window: breaks ties among windows that
hold the same ink (far below a pixel's ink)."""


def ink(frames: torch.Tensor) -> torch.Tensor:
    return ((frames.float() + 1) / 2).clamp(min=0)


def centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """``... x 1 x H x W`` frames in [-1, 1] -> ``... x 2`` centres (row, column); a blank frame: the canvas centre."""
    w = ink(frames.detach())[..., 0, :, :]
    total = w.sum((-1, -2))
    axis = torch.arange(w.shape[-1], dtype=w.dtype, device=w.device)
    rows = (w.sum(-1) * axis).sum(-1) / total.clamp(min=1e-6)
    cols = (w.sum(-2) * axis).sum(-1) / total.clamp(min=1e-6)
    centre = torch.stack([rows, cols], -1)
    return torch.where(total[..., None] > 1e-6, centre, torch.full_like(centre, (w.shape[-1] - 1) / 2))


def windows(frames: torch.Tensor) -> torch.Tensor:
    """The top-left corner (row, column) of each frame's 8x8 window: N x 2 (int64), frames N x 1 x H x W."""
    w = ink(frames.detach())
    held = F.avg_pool2d(w, DIGIT, stride=1)[:, 0] * DIGIT * DIGIT  # N x (H-7) x (W-7)
    span = held.shape[-1]
    wanted = centre_of_mass(frames) - (DIGIT - 1) / 2  # N x 2
    grid = torch.arange(span, dtype=held.dtype, device=held.device)
    distance = (grid[None, :, None] - wanted[:, 0, None, None]).square() + (grid[None, None, :] - wanted[:, 1, None, None]).square()
    best = (held - TIE * distance).flatten(1).argmax(1)
    return torch.stack([best // span, best % span], 1)


def crop(frames: torch.Tensor) -> torch.Tensor:
    """Each ``N x 1 x H x W`` frame's digit window: ``N x 1 x 8 x 8`` (see the module docstring)."""
    n = frames.shape[0]
    corner = windows(frames)
    offset = torch.arange(DIGIT, device=frames.device)
    rows = (corner[:, 0, None] + offset)[:, :, None].expand(n, DIGIT, DIGIT)
    cols = (corner[:, 1, None] + offset)[:, None, :].expand(n, DIGIT, DIGIT)
    return frames[torch.arange(n, device=frames.device)[:, None, None], 0, rows, cols][:, None]


def frames_of(videos: torch.Tensor) -> torch.Tensor:
    """``B x T x 1 x H x W`` videos as ``B*T x 1 x H x W`` frames (frames are already 4-d)."""
    return videos.flatten(0, 1) if videos.dim() == 5 else videos


class FrameClassifier(nn.Module):
    """The digits classifier on moving-digit frames (N x 1 x 16 x 16): it reads each frame's crop."""

    input_shape = (1, CANVAS, CANVAS)

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.config = getattr(classifier, "config", {})

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.classifier(crop(frames_of(frames)))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(crop(frames_of(frames)))

    def feature_maps(self, frames: torch.Tensor) -> list[torch.Tensor]:
        return self.classifier.feature_maps(crop(frames_of(frames)))


class FramePanel:
    """The digits judge panel on videos: each judge's reading of a video is the class it reads in
    every frame, or -1 where its frames disagree."""

    def __init__(self, panel: Any):
        self.panel = panel
        self.info = panel.info

    def predict_frames(self, videos: torch.Tensor) -> dict[str, np.ndarray]:
        """Each judge's reading of every frame: B x T."""
        b, t = videos.shape[:2]
        return {name: reading.reshape(b, t) for name, reading in self.panel.predict(crop(frames_of(videos))).items()}

    def predict(self, videos: torch.Tensor) -> dict[str, np.ndarray]:
        out = {}
        for name, reading in self.predict_frames(videos).items():
            same = (reading == reading[:, :1]).all(1)
            out[name] = np.where(same, reading[:, 0], -1)
        return out


def frame_panel_report(model: Any, videos: torch.Tensor, target: Sequence[int]) -> dict[str, Any]:
    """The judge panel on every frame, summed up per video: a video counts as read as K by a judge
    only when that judge reads every frame as K (``read_by_all``: by every judge in every frame).
    Realism, saturation and digits-FD are the frames' (their crops against the real digits)."""
    from types import SimpleNamespace

    from shortcut_diffusion.models.testbed.panel import panel_report

    b, t = videos.shape[:2]
    frame_target = [int(k) for k in target for _ in range(t)]
    base = SimpleNamespace(panel=model.panel.panel, classifier=model.classifier.classifier)
    frames = panel_report(base, crop(frames_of(videos)), frame_target)
    readings = np.stack([np.array(r).reshape(b, t) for r in frames["predicted"].values()])  # judges x B x T
    hits = readings == np.array(target)[None, :, None]
    report = {key: frames[key] for key in ("judges", "realism", "saturation", "saturation_real", "digits_fd")}
    report.update({
        "target": [int(k) for k in target],
        "predicted_frames": {name: r.tolist() for name, r in zip(frames["judges"], readings)},
        "read_by_judge": {name: int(hit.all(1).sum()) for name, hit in zip(frames["judges"], hits)},
        "read_by_all": int(hits.all(2).all(0).sum()),
        "count": b,
        "agreement": float((readings == readings[:1]).all(0).all(1).mean()),
        "frames_read_by_all": float(hits.all(0).mean()),
    })
    return report


def video_metrics(model: Any, videos: torch.Tensor, labels: Sequence[Any]) -> dict[str, float]:
    """Per-frame classifier and judge accuracy (``accuracy``: frames; ``video_accuracy``: videos
    read right in every frame), digits-FD of each frame position against the held-out digits
    (``digits_fd``: the mean over positions, ``digits_fd_worst_frame``), the within-class
    diversity of the first frames, ink, and the motion
    against the conditioned directions (:func:`.motion.direction_scores`)."""
    from shortcut_diffusion.models.testbed import metrics
    from shortcut_diffusion.models.testbed.moving.motion import direction_scores

    videos = videos.detach().float().cpu()
    b, t = videos.shape[:2]
    classes = torch.as_tensor([int(k) for k in labels])
    crops = crop(frames_of(videos)).view(b, t, 1, DIGIT, DIGIT)
    row: dict[str, float] = {}
    with torch.no_grad():
        for name, network in (("", model.classifier), ("judge_", model.judge)):
            if network is not None:
                device = next(network.parameters()).device
                read = network(frames_of(videos).to(device)).argmax(1).cpu().view(b, t) == classes[:, None]
                row[f"{name}accuracy"] = float(read.float().mean())
                row[f"{name}video_accuracy"] = float(read.all(1).float().mean())
    if b >= 2:
        fd = [metrics.digits_fd(model.classifier.classifier, crops[:, i]) for i in range(t)]
        row.update({"digits_fd": float(np.mean(fd)), "digits_fd_worst_frame": float(np.max(fd))})
        spread = [metrics.diversity(model.classifier.classifier, crops[classes == k, 0]) for k in classes.unique()]
        row["diversity"] = float(np.mean(spread))  # of the first frames, within each class
    row["ink"] = metrics.ink(videos)
    row.update(direction_scores(videos, labels))
    return row


def evaluate_video_model(model: Any, per_class: int, seed: int = 0, steps: int = 50) -> dict[str, dict[str, float]]:
    """``per_class`` videos of every class (directions in turn) against the held-out digits, and
    the same metrics for real held-out moving digits as the reference."""
    from shortcut_diffusion.models.testbed.moving import data
    from shortcut_diffusion.models.testbed.moving.model import MotionLabel
    from shortcut_diffusion.tasks.generate import sample_images

    labels = [MotionLabel(k, i % len(data.DIRECTIONS)) for k in range(10) for i in range(per_class)]
    noise = torch.randn((len(labels), *model.sample_shape), generator=torch.Generator().manual_seed(seed))
    videos = sample_images(model, noise, labels, steps=steps, seed=seed + 1, batch=64)
    real = data.load("held_out", seed=seed)
    real_labels = [MotionLabel(int(k), int(d)) for k, d in zip(real.labels, real.directions)]
    return {f"model_ddim{steps}": video_metrics(model, videos, labels),
            "real_held_out_moving_digits": video_metrics(model, real.videos, real_labels)}
