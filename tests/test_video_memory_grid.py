"""sdo bench --frames-grid: bytes saved for backward as a video model's frames and steps grow."""

from __future__ import annotations

import json

import pytest

from shortcut_diffusion import UsageError
from shortcut_diffusion.cli import main
from shortcut_diffusion.measure.bench import BenchConfig
from shortcut_diffusion.measure.bench.frames import run_frames_grid


def test_sdo_is_flat_in_steps_while_full_and_checkpointed_grow(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["bench", "--model", "random:wan:tiny", "--frames-grid", "1", "5", "--steps", "2", "4", "--batch", "1",
                 "--reward", "neg-mse", "--out", str(out)]) == 0
    rows = json.loads((out / "video_memory.json").read_text())["rows"]
    saved = {(r["estimator"], r["frames"], r["steps"]): r["saved_bytes"] for r in rows}
    assert {k[0] for k in saved} == {"full", "checkpointed", "truncated:k=2", "sdo"}
    for frames in (1, 5):
        assert saved[("sdo", frames, 2)] == saved[("sdo", frames, 4)] > 0
        assert saved[("full", frames, 4)] > 1.9 * saved[("full", frames, 2)]  # one graph per step
        assert saved[("checkpointed", frames, 4)] > saved[("checkpointed", frames, 2)] > 0
        assert saved[("truncated:k=2", frames, 2)] == saved[("full", frames, 2)]  # k = N: every step kept
        assert saved[("sdo", frames, 4)] < saved[("full", frames, 4)] / 3
    for spec in ("full", "checkpointed", "truncated:k=2", "sdo"):
        assert saved[(spec, 5, 4)] > saved[(spec, 1, 4)]  # more frames, more activations
    text = (out / "video_memory.md").read_text()
    assert "| sdo, 5 frames |" in text and "`random:wan:tiny`" in text
    assert "video_memory.md" in capsys.readouterr().out


def test_the_grid_is_deterministic(tmp_path):
    config = dict(model="random:wan:tiny", frames_grid=[5], steps=[3], batch=1, reward="neg-mse",
                  estimators=["full", "sdo"])
    first = run_frames_grid(BenchConfig(**config, out=str(tmp_path / "a")), "sdo bench", log=None)
    second = run_frames_grid(BenchConfig(**config, out=str(tmp_path / "b")), "sdo bench", log=None)
    assert first == second


def test_refusals(tmp_path):
    with pytest.raises(UsageError, match="drop --frames"):
        run_frames_grid(BenchConfig(model="random:wan:tiny", frames_grid=[5], frames=5, out=str(tmp_path)), "x")
    with pytest.raises(UsageError, match="--frames"):  # an image model takes no frame count
        run_frames_grid(BenchConfig(model="toy", frames_grid=[5], steps=[2], out=str(tmp_path / "t")), "x", log=None)
