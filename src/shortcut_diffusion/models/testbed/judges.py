"""The judge panel: three digit judges of different model families, none of them ever a reward.

One neural judge shares the reward classifier's blind spots: both learn the same shortcuts from
the same 1,437 digits. A result counts as "read as K" only where every judge of the panel agrees
(:func:`shortcut_diffusion.models.testbed.panel.panel_report`). The judges, all trained on the
training split and measured on the held-out split:

- ``mlp``: the held-out judge of :mod:`.judge` (a multilayer perceptron on the 64 pixels).
- ``knn``: k-nearest neighbours (k = 3) on the 64 pixels, Euclidean distance, against the
  training split. It has no parameters: the reference set is the training split that
  :func:`shortcut_diffusion.models.testbed.data.load` rebuilds deterministically; the majority of
  the three neighbours' classes wins, a three-way tie goes to the nearest.
- ``forest``: a random forest (scikit-learn's ``RandomForestClassifier``, 100 fully grown trees,
  seed = the testbed seed + 2) on 80 simple features: the 64 pixels, the 8 row means and the 8
  column means. Exported to plain arrays (``panel.safetensors``: each node's children, feature,
  threshold and the majority class of its training digits); each tree votes the class of the leaf
  an image reaches, the most votes win (a tie goes to the lowest class).

No file is a pickle: the forest is arrays in safetensors, the rest is JSON in ``testbed.json``
(``panel``). Training the panel takes about a second::

    python -m shortcut_diffusion.models.testbed.judges --out DIR   # adds the panel to a testbed directory
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from shortcut_diffusion.models.testbed import data

KNN_K = 3
FOREST_TREES = 100
FOREST_SEED_OFFSET = 2
PANEL_FILE = "panel.safetensors"


def forest_features(images: torch.Tensor) -> np.ndarray:
    """The forest's 80 features of N x 1 x 8 x 8 images: pixels, row means, column means (float32)."""
    x = images.detach().float().cpu().reshape(len(images), 8, 8)
    return torch.cat([x.flatten(1), x.mean(2), x.mean(1)], 1).numpy()


class MlpJudge:
    """The multilayer-perceptron judge (:class:`.judge.DigitJudge`) as a panel member."""

    family = "multilayer perceptron on the 64 pixels (the held-out judge)"

    def __init__(self, network: torch.nn.Module):
        self.network = network

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        device = next(self.network.parameters()).device
        return self.network(images.to(device).float()).argmax(1).cpu().numpy()


class KnnJudge:
    """k-nearest neighbours on pixels against the training split."""

    family = f"{KNN_K}-nearest neighbours on the 64 pixels (training split, Euclidean)"

    def __init__(self, k: int = KNN_K):
        self.k = k

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        train = data.load("train")
        distances = torch.cdist(images.detach().float().cpu().flatten(1), train.images.flatten(1))
        nearest = distances.topk(self.k, largest=False).indices  # sorted, nearest first
        neighbours = train.labels[nearest]
        votes = F.one_hot(neighbours, 10).sum(1).float() + 0.5 * F.one_hot(neighbours[:, 0], 10)
        return votes.argmax(1).numpy()


@dataclass
class ForestJudge:
    """A random forest as arrays: node ``i`` sends an image to ``left[i]`` when feature
    ``feature[i]`` is at most ``threshold[i]``, else to ``right[i]``; a leaf (``left == -1``) votes
    ``leaf_class[i]``. ``roots`` are the first nodes of the trees (indices are global)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    leaf_class: np.ndarray
    roots: np.ndarray

    family = f"random forest ({FOREST_TREES} trees) on pixels, row means and column means"

    @classmethod
    def from_sklearn(cls, forest: Any) -> "ForestJudge":
        parts, offset, roots = [], 0, []
        for tree in (estimator.tree_ for estimator in forest.estimators_):
            leaf = tree.children_left == -1
            shift = np.where(leaf, 0, offset)
            parts.append((tree.children_left + shift, tree.children_right + shift, np.where(leaf, 0, tree.feature),
                          tree.threshold, forest.classes_[tree.value[:, 0].argmax(1)]))
            roots.append(offset)
            offset += tree.node_count
        left, right, feature, threshold, leaf_class = (np.concatenate(column) for column in zip(*parts))
        return cls(left.astype(np.int32), right.astype(np.int32), feature.astype(np.uint8),
                   threshold.astype(np.float64), leaf_class.astype(np.uint8), np.array(roots, dtype=np.int32))

    def predict(self, images: torch.Tensor) -> np.ndarray:
        x = forest_features(images)
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        while True:
            inner = self.left[node] != -1
            if not inner.any():
                break
            goes_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(goes_left, self.left[node], self.right[node]), node)
        votes = np.zeros((len(x), 10), dtype=np.int64)
        np.add.at(votes, (np.repeat(rows[:, 0], node.shape[1]), self.leaf_class[node].ravel()), 1)
        return votes.argmax(1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
                for name in ("left", "right", "feature", "threshold", "leaf_class", "roots")}


@dataclass
class JudgePanel:
    """Named judges (``mlp``, ``knn``, ``forest``) and what ``testbed.json`` says of them."""

    judges: dict[str, Any]
    info: dict[str, Any]

    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        return {name: judge.predict(images) for name, judge in self.judges.items()}


def held_out_accuracy(judge: Any) -> float:
    held = data.load("held_out")
    return float((judge.predict(held.images) == held.labels.numpy()).mean())


def train_forest(seed: int) -> ForestJudge:
    from sklearn.ensemble import RandomForestClassifier

    train = data.load("train")
    forest = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
    return ForestJudge.from_sklearn(forest.fit(forest_features(train.images), train.labels.numpy()))


def train_panel(seed: int = 0, mlp: Optional[torch.nn.Module] = None) -> JudgePanel:
    """The kNN and forest judges (and ``mlp``, the trained held-out judge, when given), each with
    its held-out accuracy in ``info``."""
    judges: dict[str, Any] = {} if mlp is None else {"mlp": MlpJudge(mlp)}
    judges["knn"] = KnnJudge()
    judges["forest"] = train_forest(seed + FOREST_SEED_OFFSET)
    info = {name: {"family": judge.family, "held_out_accuracy": held_out_accuracy(judge)} for name, judge in judges.items()}
    info["knn"]["k"] = KNN_K
    info["forest"].update(trees=FOREST_TREES, seed=seed + FOREST_SEED_OFFSET)
    return JudgePanel(judges, info)


def save_panel(panel: JudgePanel, directory: Path) -> None:
    """``panel.safetensors`` (the forest's arrays) and ``testbed.json``'s ``panel`` entry."""
    from shortcut_diffusion.io.reporting import atomic_write_bytes, save_tensors

    directory = Path(directory)
    save_tensors(directory / PANEL_FILE, panel.judges["forest"].tensors())
    info_path = directory / "testbed.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["panel"] = panel.info
    atomic_write_bytes(info_path, (json.dumps(info, indent=2) + "\n").encode())


def load_panel(directory: Path, mlp: Optional[torch.nn.Module] = None) -> Optional[JudgePanel]:
    """The panel saved in ``directory`` (with ``mlp``, the loaded held-out judge), or None when it has none."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    info = json.loads((directory / "testbed.json").read_text()).get("panel")
    if info is None or not (directory / PANEL_FILE).is_file():
        return None
    judges: dict[str, Any] = {} if mlp is None else {"mlp": MlpJudge(mlp)}
    judges["knn"] = KnnJudge(int(info["knn"]["k"]))
    judges["forest"] = ForestJudge(**load_file(directory / PANEL_FILE))
    return JudgePanel(judges, {name: info[name] for name in judges if name in info})


def main(argv=None) -> int:
    from shortcut_diffusion.models.testbed.judge import load_judge

    parser = argparse.ArgumentParser(description="train the judge panel of a digits testbed (about a second)")
    parser.add_argument("--out", required=True, help="the testbed directory to add panel.safetensors to")
    parser.add_argument("--seed", type=int, default=0, help="the testbed seed (the forest's is this + 2)")
    args = parser.parse_args(argv)
    panel = train_panel(args.seed, load_judge(Path(args.out)))
    save_panel(panel, Path(args.out))
    for name, entry in panel.info.items():
        print(f"{name}: held-out accuracy {entry['held_out_accuracy']:.4f} ({entry['family']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
