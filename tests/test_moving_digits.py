"""The moving-digits video testbed: data, frame crops, the motion metric, the bundled model, the demo."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.testbed import data as digits_data
from shortcut_diffusion.models.testbed.moving import data, frames, motion


@pytest.fixture(scope="module")
def real():
    return data.load("held_out", seed=0)


@pytest.fixture(scope="module")
def model():
    from shortcut_diffusion import load_model

    return load_model("moving-digits")


def test_videos_are_the_held_out_digits_moving_one_pixel_a_frame(real):
    held = digits_data.load("held_out")
    assert real.videos.shape == (len(held.labels), data.FRAMES, 1, data.CANVAS, data.CANVAS)
    assert torch.equal(real.labels, held.labels)
    steps = real.corners[:, 1:] - real.corners[:, :-1]
    expected = torch.tensor([data.STEP[name] for name in data.DIRECTIONS])[real.directions]
    assert torch.equal(steps, expected[:, None].expand_as(steps))
    assert real.corners.min() >= 0 and real.corners.max() <= data.CANVAS - data.DIGIT
    assert set(real.directions.tolist()) == set(range(len(data.DIRECTIONS)))
    n, t = 5, 3
    r, c = real.corners[n, t].tolist()
    assert torch.equal(real.videos[n, t, 0, r : r + 8, c : c + 8], held.images[n, 0])
    assert torch.equal(data.load("held_out", seed=0).videos, real.videos)  # deterministic from the seed
    assert not torch.equal(data.load("held_out", seed=1).directions, real.directions)


def test_latent_layout_is_channels_then_frames(real):
    latent = data.to_latent(real.videos[:2])
    assert latent.shape == (2, 1, data.FRAMES, data.CANVAS, data.CANVAS)
    assert torch.equal(data.to_video(latent), real.videos[:2])


def test_crop_finds_the_digit_and_the_judges_read_real_frames(real, model):
    corners = frames.windows(real.videos[:40].flatten(0, 1)).view(40, data.FRAMES, 2)
    assert (corners == real.corners[:40]).all(-1).float().mean() > 0.8
    report = frames.frame_panel_report(model, real.videos[:40], real.labels[:40].tolist())
    assert report["count"] == 40 and report["read_by_all"] >= 30
    assert report["read_by_all"] <= min(report["read_by_judge"].values())


def test_motion_metric_on_known_tracks(real):
    right = real.videos[real.directions == 0][:4]
    moves = motion.displacement(right)
    ideal = torch.stack([torch.zeros(data.FRAMES), torch.arange(data.FRAMES, dtype=torch.float32)], -1)
    assert torch.allclose(moves, ideal.expand_as(moves), atol=1e-4)  # a pasted digit's centre moves exactly
    assert motion.motion_deviation(right, right)["motion_deviation_max"] == pytest.approx(0.0, abs=1e-5)
    reversed_ = right.flip(1)  # the same frames backwards: moving left
    deviation = motion.motion_deviation(reversed_, right)
    assert deviation["motion_deviation"] == pytest.approx(2 * 7, abs=1e-3) and deviation["motion_within_tolerance"] == 0
    from shortcut_diffusion.models.testbed.moving.model import MotionLabel

    labels = [MotionLabel(0, 0)] * 4
    assert motion.direction_scores(right, labels) == pytest.approx({"motion_accuracy": 1.0, "motion_error": 0.0}, abs=1e-4)
    assert motion.direction_scores(reversed_, labels)["motion_accuracy"] == 0.0


def test_bundled_model_loads_and_conditions_on_class_and_direction(model):
    from shortcut_diffusion.models.testbed.moving.model import MotionLabel

    assert model.family == "moving-digits" and model.sample_shape == (1, 8, 16, 16)
    assert model.image_shape == (8, 1, 16, 16)
    labels = model.labels_from(["7:left", "7", "all"], "--cond")
    assert labels[0] == 7 and labels[0].direction == 1 and labels[1].direction == 0 and len(labels) == 12
    assert json.dumps(labels[:2]) == "[7, 7]" and repr(labels[0]) == "7:left"
    cond = model.conditioning([MotionLabel(7, 0), MotionLabel(7, 1)])
    assert cond.shape == (2, model.network.emb_dim) and not torch.equal(cond[0], cond[1])
    with pytest.raises(UsageError, match="unknown direction"):
        model.labels_from(["7:sideways"], "--cond")
    out = model.denoiser()(torch.randn(2, *model.sample_shape), torch.tensor(500), cond)
    assert out.shape == (2, *model.sample_shape) and torch.isfinite(out).all()
    assert model.decode(out).shape == (2, 8, 1, 16, 16)


def test_digit_rewards_score_every_frame(model, real):
    from shortcut_diffusion.rewards import get_reward

    reward = get_reward("digit-class:7", shape=model.image_shape, model=model)
    sevens, ones = real.videos[real.labels == 7][:3], real.videos[real.labels == 1][:3]
    assert (reward(sevens) > reward(ones)).all()
    video = sevens.clone().requires_grad_(True)
    reward(video).sum().backward()
    assert video.grad.abs().sum() > 0


def test_gif_writer_writes_every_frame(tmp_path, real):
    from PIL import Image

    from shortcut_diffusion.io.video import save_gif

    path = save_gif(tmp_path / "v.gif", real.videos[:3])
    with Image.open(path) as gif:
        assert gif.n_frames == data.FRAMES and gif.size == (4 * (3 * 17 + 1), 4 * 18)
    with pytest.raises(ValueError):
        save_gif(tmp_path / "x.gif", real.videos[0])


def test_demo_runs_on_moving_digits_at_tiny_size(tmp_path):
    from PIL import Image

    from shortcut_diffusion.tasks.latent.config import DemoConfig
    from shortcut_diffusion.tasks.latent.run import run_latent

    result, out = run_latent(DemoConfig(model="moving-digits", iters=1, steps=2, batch=2, out=str(tmp_path / "d"),
                                        grid_every=0, progress=False))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["panel"]["count"] == 2 and summary["panel"]["target"] == [7, 7]
    assert 0 <= summary["motion"]["motion_within_tolerance"] <= 1
    assert (out / "before_after.png").is_file()
    for name in ("before.gif", "after.gif"):
        with Image.open(out / name) as gif:
            assert gif.n_frames == data.FRAMES
    config = json.loads((out / "config.json").read_text())
    assert config["reward_augment"] == [] and config["steps"] == 2 and config["cond"][0] == "1:right"


def test_train_testbed_video_tiny(tmp_path):
    from shortcut_diffusion import load_model
    from shortcut_diffusion.models.testbed.config import TrainTestbedConfig
    from shortcut_diffusion.options.parsing import given_options
    from shortcut_diffusion.tasks.testbed import train_testbed

    from shortcut_diffusion.models.testbed.moving.frames import evaluate_video_model

    config = TrainTestbedConfig(video=True, steps=2, batch=2, channels=[8, 16], eval_per_class=0,
                                out=str(tmp_path / "m"))
    assert config.resolved().lr == 2e-3 and config.resolved().batch == 2  # --video defaults, given values win
    given = given_options(TrainTestbedConfig, ["train-testbed", "--video", "--steps", "12000"])
    assert TrainTestbedConfig(video=True).resolved(given).steps == 12000  # given at the digits default, still wins
    train_testbed(config, progress=False, log=None)
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.family == "moving-digits" and loaded.unet.config["channels"] == [8, 16]
    report = evaluate_video_model(loaded, per_class=1, steps=2)
    assert {"accuracy", "video_accuracy", "digits_fd", "motion_accuracy", "ink"} <= set(report["model_ddim2"])
    reference = report["real_held_out_moving_digits"]
    assert reference["motion_accuracy"] == 1.0 and reference["video_accuracy"] > 0.9
    with pytest.raises(UsageError, match="--objective flow"):
        TrainTestbedConfig(video=True, objective="flow").check()

    # --init trains on from the saved weights (lr 0: they stay as they were) and records their run
    again = TrainTestbedConfig(video=True, steps=2, batch=2, channels=[8, 16], eval_per_class=0, lr=1e-12, seed=1,
                               init=str(tmp_path / "m"), out=str(tmp_path / "m2"))
    train_testbed(again, progress=False, log=None)
    continued = load_model(str(tmp_path / "m2"))
    for name, value in loaded.unet.state_dict().items():
        torch.testing.assert_close(continued.unet.state_dict()[name], value, rtol=0, atol=1e-6)
    torch.testing.assert_close(continued.embeddings.weight, loaded.embeddings.weight, rtol=0, atol=1e-6)
    assert [run["training"]["seed"] for run in continued.info["init_training"]] == [0]
    assert TrainTestbedConfig(video=True, init=str(tmp_path / "m")).resolved().channels == [8, 16]  # its widths
    with pytest.raises(UsageError, match="--channels 8 16"):  # refused before --out is claimed or cleared
        train_testbed(replace(again, channels=[16, 16], out=str(tmp_path / "m2"), overwrite=True), progress=False,
                      log=None)
    assert (tmp_path / "m2" / "network.safetensors").is_file()
    with pytest.raises(UsageError, match="is --init's directory"):
        train_testbed(replace(again, out=str(tmp_path / "m"), overwrite=True), progress=False, log=None)
    assert (tmp_path / "m" / "network.safetensors").is_file()
    with pytest.raises(UsageError, match="no moving-digits model there"):
        TrainTestbedConfig(video=True, init=str(tmp_path)).check()
    with pytest.raises(UsageError, match="needs --video"):
        TrainTestbedConfig(init=str(tmp_path / "m")).check()


def test_lora_finetune_runs_on_moving_digits(tmp_path):
    from shortcut_diffusion.tasks.finetune.config import FinetuneConfig
    from shortcut_diffusion.tasks.finetune.run import run_finetune

    config = FinetuneConfig(model="moving-digits", target="lora", reward="ink=1;digit-match=2", cond=["0", "1"],
                            eval_cond=["5", "6"], max_steps=1, steps=2, batch=2, eval_per_class=1,
                            out=str(tmp_path / "ft"), progress=False)
    summary = run_finetune(config)
    for row in (summary["before"], summary["after"]):
        assert {"motion_accuracy", "ink", "accuracy", "panel_read_by_all"} <= set(row)
    assert (tmp_path / "ft" / "final").is_dir()


def test_frames_grid_on_moving_digits_at_its_frame_count(tmp_path):
    # its frame count is fixed (frames are channels), so the grid is over steps: SDO flat, full growing
    from shortcut_diffusion.cli import main

    out = tmp_path / "grid"
    assert main(["bench", "--model", "moving-digits", "--frames-grid", "8", "--steps", "2", "4", "--batch", "1",
                 "--reward", "digit-class:7", "--estimators", "full", "sdo", "--out", str(out)]) == 0
    rows = {(r["estimator"], r["steps"]): r["saved_bytes"] for r in json.loads((out / "video_memory.json").read_text())["rows"]}
    assert rows[("full", 4)] > 1.8 * rows[("full", 2)]
    assert abs(rows[("sdo", 4)] - rows[("sdo", 2)]) < 0.01 * rows[("sdo", 2)]
