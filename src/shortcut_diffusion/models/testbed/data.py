"""The real data of the testbed: scikit-learn's handwritten digits (ships with scikit-learn).

1,797 8x8 grey-level images (values 0..16), 10 classes. Kept at their native 8x8: upsampling to
16x16 adds no information, and would make every network call of the model about four times more
expensive on a CPU. Pixels are scaled to [-1, 1]. The split into a training part (80%) and a
held-out part (20%) is stratified and fixed by a seed, so the classifier's accuracy and the
digits-FD reference are measured on digits no model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from shortcut_diffusion.errors import UsageError

SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # N x 1 x 8 x 8 in [-1, 1]
    labels: torch.Tensor  # N, int64


def _require_sklearn():
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits testbed needs scikit-learn: pip install scikit-learn") from error
    return load_digits


@lru_cache(maxsize=1)
def _all() -> Digits:
    raw = _require_sklearn()()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return Digits(images, torch.tensor(raw.target, dtype=torch.int64))


@lru_cache(maxsize=1)
def _split_indices() -> tuple[np.ndarray, np.ndarray]:
    labels = _all().labels.numpy()
    rng = np.random.default_rng(SPLIT_SEED)
    train, held_out = [], []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_held = int(round(len(idx) * HELD_OUT_FRACTION))
        held_out.extend(idx[:n_held])
        train.extend(idx[n_held:])
    return np.sort(np.array(train)), np.sort(np.array(held_out))


def load(split: str = "all") -> Digits:
    """``split``: ``all``, ``train`` (80%, what the models are trained on) or ``held_out`` (20%)."""
    data = _all()
    if split == "all":
        return data
    if split not in ("train", "held_out"):
        raise ValueError(f"unknown split {split!r}; choose all, train or held_out")
    idx = torch.from_numpy(_split_indices()[0 if split == "train" else 1])
    return Digits(data.images[idx], data.labels[idx])


def digit_image(index: int) -> torch.Tensor:
    """Digit number ``index`` of the whole data set (1 x 8 x 8), with a clear error when out of range."""
    images = _all().images
    if not 0 <= index < len(images):
        raise UsageError(f"data-set index {index} is out of range 0..{len(images) - 1}")
    return images[index]
