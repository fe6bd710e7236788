"""The held-out judge: a second digit classifier that is never a reward, only a witness.

Latent optimization against a classifier drifts toward what fools that classifier. When the same
network both scores and judges, the run cannot see it. The judge differs from the reward's
classifier in everything that can differ on this data: architecture (a multilayer perceptron on
the 64 pixels, no convolutions), seed, augmentation (no noise, shifts only) and optimizer. It is
trained on the same training split and its accuracy is measured on the held-out split.

    python -m shortcut_diffusion.models.testbed.judge --out DIR   # writes DIR/judge.safetensors, updates DIR/testbed.json

``load_digits_model`` loads it when the directory has one (the bundled testbed does); the digits
model's ``judge`` then reads every evaluation: ``judge`` predictions in ``sdo latent``/``demo``
summaries, ``judge_accuracy`` in fine-tuning evaluations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shortcut_diffusion.io.reporting import atomic_write_bytes, save_tensors
from shortcut_diffusion.models.testbed import data
from shortcut_diffusion.models.testbed.classifier import augment

JUDGE_SEED = 1


class DigitJudge(nn.Module):
    """Logits of the ten digits from the 64 pixels: ``Linear-ReLU-Linear-ReLU-Linear``."""

    def __init__(self, hidden: int = 256, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, classes))
        self.config = {"hidden": hidden, "classes": classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_judge(seed: int = JUDGE_SEED, epochs: int = 150) -> tuple[DigitJudge, float]:
    """Train on the training split; return the judge and its held-out accuracy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, held = data.load("train"), data.load("held_out")
    judge = DigitJudge()
    opt = torch.optim.SGD(judge.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):
        order = torch.randperm(len(train.labels), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            x = augment(train.images[idx], gen)
            loss = F.cross_entropy(judge(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    judge.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((judge(held.images).argmax(1) == held.labels).float().mean())
    return judge, accuracy


def save_judge(judge: DigitJudge, accuracy: float, directory: Path) -> None:
    directory = Path(directory)
    save_tensors(directory / "judge.safetensors", judge.state_dict())
    info_path = directory / "testbed.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.update({"judge_config": judge.config, "judge_held_out_accuracy": accuracy, "judge_seed": JUDGE_SEED})
    atomic_write_bytes(info_path, (json.dumps(info, indent=2) + "\n").encode())


def load_judge(directory: Path) -> "DigitJudge | None":
    """The judge saved in ``directory``, or None when it has none."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "judge.safetensors").is_file():
        return None
    info = json.loads((directory / "testbed.json").read_text())
    judge = DigitJudge(**info.get("judge_config", {}))
    judge.load_state_dict(load_file(directory / "judge.safetensors"))
    return judge.eval().requires_grad_(False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train the held-out judge of a digits testbed")
    parser.add_argument("--out", required=True, help="the testbed directory to add judge.safetensors to")
    parser.add_argument("--seed", type=int, default=JUDGE_SEED)
    args = parser.parse_args(argv)
    judge, accuracy = train_judge(args.seed)
    save_judge(judge, accuracy, Path(args.out))
    print(f"judge held-out accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
