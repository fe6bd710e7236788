"""--report-to: a run's scalars, grids and config reach the tracker (TensorBoard, read back with
TensorBoard's own reader); a missing tracker package is one line that says how to install it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from shortcut_diffusion.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY_FINETUNE = ["--model", "toy", "--reward", "ink", "--steps", "2", "--max-steps", "2", "--batch", "2", "--cond", "1",
                 "--eval-every", "1", "--eval-per-class", "1", "--checkpoint-every", "0", "--no-progress",
                 "--device", "cpu"]
TINY_LATENT = ["--steps", "2", "--iters", "3", "--batch", "2", "--grid-every", "2", "--no-progress", "--device", "cpu"]


def events(run: Path, command: str) -> EventAccumulator:
    files = list((run / "tracking" / f"sdo-{command}").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    reader = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    reader.Reload()
    return reader


def test_finetune_reports_to_tensorboard(tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", *TINY_FINETUNE, "--report-to", "tensorboard", "--out", str(out)]) == 0
    reader = events(out, "finetune")
    scalars = set(reader.Tags()["scalars"])
    assert {"train/reward", "train/grad_norm", "eval/reward", "summary/steps"} <= scalars
    assert [e.step for e in reader.Scalars("train/reward")] == [1, 2]
    assert [e.step for e in reader.Scalars("eval/reward")] == [0, 1, 2, 2]  # before, every step, after
    assert {"eval/before", "eval/grid", "eval/after"} <= set(reader.Tags()["images"])
    hparams = list((out / "tracking" / "sdo-finetune").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "reward: ink" in hparams[0].read_text()


def test_latent_reports_to_tensorboard(tmp_path):
    out = tmp_path / "run"
    assert main(["latent", *TINY_LATENT, "--report-to", "tensorboard", "--out", str(out)]) == 0
    reader = events(out, "latent")
    assert {"train/reward", "train/loss", "summary/final_reward"} <= set(reader.Tags()["scalars"])
    assert [e.step for e in reader.Scalars("train/reward")] == [0, 1, 2]
    assert {"grid", "before_after"} <= set(reader.Tags()["images"])
    assert [e.step for e in reader.Images("grid")] == [0, 2]


def test_overwrite_removes_the_tracker_files_like_the_run_files(tmp_path):
    out = tmp_path / "run"
    argv = ["latent", *TINY_LATENT, "--iters", "1", "--report-to", "tensorboard", "--out", str(out)]
    assert main(argv) == 0
    files = lambda: {p for p in (out / "tracking").rglob("*") if p.is_file()}  # noqa: E731
    first = files()
    assert main([*argv, "--overwrite"]) == 0
    assert first and not first & files(), "the first run's tracker files survived"
    assert len(list((out / "tracking" / "sdo-latent").glob("events.out.tfevents.*"))) == 1


def test_no_tracker_by_default(tmp_path):
    out = tmp_path / "run"
    assert main(["latent", *TINY_LATENT, "--iters", "1", "--out", str(out)]) == 0
    assert not (out / "tracking").exists()


def test_a_missing_tracker_package_is_one_line(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["latent", *TINY_LATENT, "--report-to", "tensorboard", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sdo: error: --report-to tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "run").exists()
