"""The videos people look at: an animated GIF per sample, an MP4 per sample where PyAV is
installed (skipped with one note otherwise), and before/after frame grids, all listed in the
run's manifest."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from shortcut_diffusion.io import runfiles, video


def ramp(batch=2, frames=5, size=8):
    """Videos whose frame t is the grey level -1 + t / 2 (frame t of sample b shifted by b / 4)."""
    levels = -1 + torch.arange(frames).float() / 2
    out = levels.view(1, frames, 1, 1, 1) + torch.arange(batch).float().view(batch, 1, 1, 1, 1) / 4
    return out.clamp(-1, 1).expand(batch, frames, 3, size, size).clone()


def gif_frames(payload: bytes) -> list:
    import numpy as np

    with Image.open(io.BytesIO(payload)) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
        return frames


def test_gif_holds_every_frame_upscaled_and_in_order():
    videos = ramp()
    frames = gif_frames(video.gif_bytes(videos[0]))
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3)  # 8 px upscaled 8 x
    expected = [round((float(v) + 1) * 127.5) for v in videos[0, :, 0, 0, 0]]
    assert [int(f[10, 10, 0]) for f in frames] == pytest.approx(expected, abs=2)


def test_mp4_decodes_to_the_frames():
    av = pytest.importorskip("av")
    payload = video.mp4_bytes(ramp()[1])
    with av.open(io.BytesIO(payload)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (64, 64, 3)
    means = [float(f.mean()) for f in decoded]
    assert means == sorted(means) and means[-1] - means[0] > 150  # the ramp, through lossy compression


def test_run_outputs_are_listed_and_mp4_is_skipped_with_one_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(video, "mp4_available", lambda: False)
    monkeypatch.setattr(video, "_NOTED", set())
    runfiles.begin(tmp_path)
    try:
        before, after = ramp(), -ramp()
        written = video.save_before_after(tmp_path, before, after)
        video.save_before_after(tmp_path, before, after)
    finally:
        runfiles.end(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == ["after.gif", "before.gif", "before_after.png", "videos/after_00.gif", "videos/after_01.gif",
                     "videos/before_00.gif", "videos/before_01.gif"]
    with Image.open(tmp_path / "before.gif") as gif:  # the batch side by side, every frame
        assert gif.n_frames == before.shape[1]
    assert set(names) <= set(json.loads((tmp_path / runfiles.MANIFEST).read_text()))
    assert capsys.readouterr().err.count("MP4 videos are skipped") == 1
    with Image.open(tmp_path / "before_after.png") as grid:  # 5 frames across, 2 samples x (before, after) down
        assert grid.size == ((5 * 9 + 1) * 8, (4 * 9 + 1) * 8)  # 8 px tiles, 1 px pads, all upscaled 8 x
        rgb = grid.convert("RGB")
    pixel = [[rgb.getpixel(((1 + 9 * j) * 8 + 4, (1 + 9 * i) * 8 + 4))[0] for j in range(5)] for i in range(4)]
    assert [row[0] for row in pixel] == [0, 255, 32, 223]  # before_0, after_0, before_1, after_1
    assert pixel[2][:3] == [32, 96, 159]  # sample 1 before: its frames along the row


def test_images_keep_their_two_row_grid(tmp_path):
    written = video.save_before_after(tmp_path, torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8))
    assert [p.name for p in written] == ["before_after.png"] and not (tmp_path / "videos").exists()
