"""Experiment trackers (``--report-to``) for ``sdo latent`` and ``sdo finetune``, through Accelerate's.

A :class:`Tracker` logs the run's config once, every metrics row as scalars (``train/...`` per
iteration or optimizer step, ``eval/...`` per evaluation), and the grids the run writes as images
where the tracker takes images (TensorBoard, W&B; MLflow stores them as artifacts). It writes under
``OUT/tracking``. Offline by default: W&B runs with ``WANDB_MODE=offline`` and MLflow stores to
``OUT/tracking/mlruns`` unless ``WANDB_MODE`` or ``MLFLOW_TRACKING_URI`` are set; TensorBoard's
event files and trackio's database are local files. The files are listed in the run's manifest.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io import runfiles

DIRECTORY = "tracking"


def check_installed(name: str) -> None:
    """A tracker whose package is missing fails before any work, with the line that installs it."""
    if name != "none" and importlib.util.find_spec(name) is None:
        raise UsageError(f"--report-to {name} needs the {name} package: pip install {name}")


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the flat scalars trackers store (lists and None as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in config.items()}


def _backend(name: str, directory: Path, run_name: str) -> Any:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    directory.mkdir(parents=True, exist_ok=True)
    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        return cls(run_name, logging_dir=directory)
    if name == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        return cls(run_name, dir=str(directory))
    if name == "mlflow":
        os.environ.setdefault("MLFLOW_TRACKING_URI", (directory / "mlruns").resolve().as_uri())
        return cls(experiment_name=run_name, run_name=run_name)
    return cls(run_name)  # trackio: a local database unless a Space is configured


class Tracker:
    """The tracker ``name`` of one run of ``command`` in ``out`` (with ``none``: does nothing)."""

    def __init__(self, name: str, out: Path, command: str, config: dict[str, Any]):
        check_installed(name)
        self.name, self.out, self.command, self.config = name, Path(out), command, config
        self.backend: Any = None

    def _started(self) -> Any:
        """The backend, started on the first value logged (a run that fails before has no tracker files)."""
        if self.backend is None and self.name != "none":
            self.backend = _backend(self.name, self.out / DIRECTORY, f"sdo-{self.command}")
            self.backend.start()
            self.backend.store_init_configuration(_hyperparameters(self.config))
            self._list_files()
        return self.backend

    def _list_files(self) -> None:
        """The tracker's files, in the run's manifest (``--overwrite`` removes them like sdo's own)."""
        directory = self.out / DIRECTORY
        runfiles.record(directory, directory=True)
        for path in directory.rglob("*"):
            if path.is_file():
                runfiles.record(path)

    def scalars(self, row: dict[str, Any], step: int, prefix: str = "train") -> None:
        """The numbers of a metrics row (finite or not; text and lists are left out)."""
        values = {f"{prefix}/{k}": float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values and self._started() is not None:
            self.backend.log(values, step=step)

    def image(self, tag: str, path: Path, step: int) -> None:
        """A picture the run wrote (a grid PNG)."""
        if self._started() is None:
            return
        if hasattr(self.backend, "log_images"):
            import numpy as np
            from PIL import Image

            picture = np.asarray(Image.open(path).convert("RGB"))
            kwargs = {"dataformats": "NHWC"} if self.backend.name == "tensorboard" else {}
            self.backend.log_images({tag: picture[None]}, step=step, **kwargs)
        elif hasattr(self.backend, "log_artifact"):
            self.backend.log_artifact(str(path), artifact_path=tag)

    def close(self, summary: Optional[dict[str, Any]] = None, step: int = 0) -> None:
        """The run's summary numbers (``summary/...``), then the tracker is finished."""
        if summary:
            self.scalars(summary, step, prefix="summary")
        if self.backend is not None:
            self.backend.finish()
            self._list_files()
        self.name, self.backend = "none", None
