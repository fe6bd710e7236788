"""Training-free guidance (FreeDoM): plain sampling at scale 0, a better reward with guidance,
time travel, the command line."""

from __future__ import annotations

import json

import pytest
import torch

from shortcut_diffusion import UsageError, load_model, make_scheduler
from shortcut_diffusion.cli import main
from shortcut_diffusion.tasks.generate import sample_images
from shortcut_diffusion.tasks.guide.freedom import freedom_sample
from shortcut_diffusion.rewards import get_reward


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


def noise(batch: int = 4) -> torch.Tensor:
    return torch.randn((batch, 1, 8, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_scale_zero_is_plain_sampling(digits, scheduler):
    s = make_scheduler(scheduler, like=digits.scheduler)
    result = freedom_sample(digits, noise(), [1] * 4, get_reward("ink"), steps=8, scale=0.0, scheduler=s)
    plain = sample_images(digits, noise(), [1] * 4, steps=8, scheduler=s)
    torch.testing.assert_close(result.images, plain, rtol=1e-4, atol=1e-5)
    assert result.network_calls == 8


def test_guidance_raises_the_reward(digits):
    reward = get_reward("digit-class:7", model=digits)
    plain = freedom_sample(digits, noise(), [1] * 4, reward, steps=10, scale=0.0)
    guided = freedom_sample(digits, noise(), [1] * 4, reward, steps=10, scale=1.0)
    assert guided.rewards.mean() > plain.rewards.mean() + 1.0


def test_time_travel_repeats_the_window(digits):
    reward = get_reward("digit-class:7", model=digits)
    once = freedom_sample(digits, noise(), [1] * 4, reward, steps=10, scale=1.0)
    travelled = freedom_sample(digits, noise(), [1] * 4, reward, steps=10, scale=1.0, travel=3, travel_window=(2, 6))
    assert travelled.network_calls == 10 + 2 * 4
    assert not torch.equal(once.images, travelled.images)


def test_flow_matching_and_bad_options_are_refused(digits):
    with pytest.raises(UsageError, match="window inside"):
        freedom_sample(digits, noise(), [1] * 4, get_reward("ink"), steps=4, travel_window=(2, 9))
    with pytest.raises(UsageError, match="not flow matching"):
        freedom_sample(digits, noise(), [1] * 4, get_reward("ink"), steps=4,
                       scheduler=make_scheduler("flow-euler"))


def test_sdo_guide_writes_its_run_directory(tmp_path, capsys):
    out = tmp_path / "guide"
    assert main(["guide", "--steps", "6", "--batch", "2", "--scale", "1.0", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_reward"] > summary["start_reward"]
    assert len(summary["judge_final_predicted"]) == 2 and (out / "before_after.png").is_file()
    assert summary["panel"]["judges"] == ["mlp", "knn", "forest"] and summary["panel_start"]["count"] == 2
    printed = capsys.readouterr().out
    assert "guided" in printed and "panel (3 judges, never rewards): " in printed
