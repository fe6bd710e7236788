"""Training checkpoints that survive crashes: written in full to a hidden directory, then renamed.

A checkpoint ``OUT/checkpoints/step-000040/`` holds::

    trainable.safetensors   the trained tensors (and ``ema.*`` when an EMA is kept)
    optimizer.pt            AdamW and learning-rate-schedule states
    state.json              step, samples, wall clock, early-stopping state, the resume key, the
                            trainable tensors' names and shapes

The directory appears under its final name only after every file is written and synced
(``os.rename`` of a directory is atomic; :func:`shortcut_diffusion.io.runfiles.write_dir`), so a run
killed while writing, or a full disk, leaves the previous checkpoint as the latest complete one.
Pruning removes only the checkpoint's own files (and the directory, when nothing else is in it).
Training randomness is a function of the seed and the sample index, so the step counter restores
it exactly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.runfiles import write_dir

PATTERN = re.compile(r"^step-(\d{6,})$")
FILES = ("trainable.safetensors", "optimizer.pt", "state.json")  # state.json last: it marks a complete one


class CheckpointError(UsageError):
    """A checkpoint could not be written or does not fit this run."""


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(out)
    try:
        if not root.is_dir():
            return []
    except OSError:  # a name too long: no checkpoint there (--out itself is reported by the run directory)
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Optional[Path]:
    found = list_checkpoints(out)
    return found[-1] if found else None


def _write(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(out: Path, step: int, tensors: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep``."""
    import io

    from safetensors.torch import save

    def fill(directory: Path) -> None:
        _write(directory / FILES[0], save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
        buffer = io.BytesIO()
        torch.save(optimizer_state, buffer)
        _write(directory / FILES[1], buffer.getvalue())
        _write(directory / FILES[2], (json.dumps({**state, "step": step}, indent=2, default=str) + "\n").encode())

    root = checkpoint_dir(out)
    final = root / f"step-{step:06d}"
    try:
        write_dir(final, fill)
    except OSError as error:
        last = latest_checkpoint(out)
        kept = f"the last good checkpoint, {last.name}, is intact" if last else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint step {step} in {root}: {error.strerror or error}; {kept}") from error
    for old in list_checkpoints(out)[:-keep]:
        _prune(old)
    return final


def _prune(path: Path) -> None:
    """Remove an old checkpoint's own files (state.json first: no longer complete), and the
    directory when nothing else is in it."""
    for name in reversed(FILES):
        (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(tensors, optimizer_state, state)`` of a complete checkpoint."""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
        tensors = load_file(path / "trainable.safetensors")
        optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip errors of a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason})") from error
    return tensors, optimizer_state, state


def load_latest_intact(out: Path, warn=None) -> Optional[tuple[Path, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]]:
    """The newest checkpoint that reads back whole: ``(path, tensors, optimizer_state, state)``.

    A checkpoint damaged after it was written (a truncated file, a bad disk) is skipped, newest
    first, and ``warn`` is told which one and why; None when no checkpoint is readable.
    """
    for path in reversed(list_checkpoints(out)):
        try:
            return (path, *load_checkpoint(path))
        except CheckpointError as error:
            if warn is not None:
                warn(f"{error}; trying the previous checkpoint")
    return None


def check_resumable(state: dict[str, Any], resume_key: dict[str, Any], signature: dict[str, list[int]], path: Path) -> None:
    """A checkpoint from another model or configuration is refused, with the differences named."""
    saved = state.get("resume_key", {})
    differ = sorted(k for k in set(saved) | set(resume_key) if saved.get(k) != resume_key.get(k))
    if differ:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {resume_key.get(k)!r}" for k in differ)
        raise CheckpointError(f"checkpoint {path} was written by another configuration ({details}); "
                              "resume with the same options or start a new --out")
    if state.get("signature") != signature:
        raise CheckpointError(f"checkpoint {path} holds tensors of another model "
                              "(trainable names or shapes differ); resume with the same model and target")
