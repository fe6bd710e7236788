"""The rectified-flow twin of the digits testbed (``digits-flow``): its training convention agrees
with diffusers' flow-matching Euler scheduler, ``--objective flow`` trains and saves a loadable
model, and the bundled one draws digits of the asked class with every command."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, DDPMScheduler

from shortcut_diffusion import UsageError, load_model
from shortcut_diffusion.cli import main
from shortcut_diffusion.models.testbed import BUNDLED, data, load_digits_model, metrics
from shortcut_diffusion.tasks.testbed import TrainTestbedConfig, train_testbed
from shortcut_diffusion.tasks.testbed_training import sampling_scheduler, training_pair
from shortcut_diffusion.sampling.schedulers import fresh_scheduler, predicted_x0
from shortcut_diffusion.tasks.generate import sample_images


@pytest.fixture(scope="module")
def tiny_flow_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("flowbed")
    config = TrainTestbedConfig(out=str(out), objective="flow", steps=15, batch=32, channels=[8, 16], warmup=5,
                                eval_per_class=2)
    train_testbed(config, progress=False, log=None)
    return out


def test_the_training_pair_is_what_the_flow_euler_scheduler_integrates():
    """x_t and the velocity target are in the scheduler's convention (sigma = t / 1000), so Euler
    steps along the exact velocity of one clean digit regenerate that digit."""
    x0 = data.load("train").images[:4].double()
    xt, t, v = training_pair("flow", x0, torch.Generator().manual_seed(0), DDPMScheduler())
    assert 0 <= float(t.min()) and float(t.max()) <= 1000 and t.dtype.is_floating_point
    flow = sampling_scheduler("flow")
    assert torch.allclose(predicted_x0(flow, None, xt, v, t.double().view(-1, 1, 1, 1)), x0, atol=1e-5)
    noise = v + x0
    scheduler = fresh_scheduler(flow, 7)
    x = noise.clone()
    for step, timestep in enumerate(scheduler.timesteps):
        sigma = float(timestep) / 1000
        assert torch.allclose(x, (1 - sigma) * x0 + sigma * noise, atol=1e-5)  # on the training path
        x = scheduler.step((x - x0) / sigma, timestep, x).prev_sample  # the exact velocity there
    assert torch.allclose(x, x0, atol=1e-5)


def test_objective_flow_trains_and_saves_a_flow_testbed(tiny_flow_dir):
    d = tiny_flow_dir
    info = json.loads((d / "testbed.json").read_text())
    assert info["objective"] == "flow" and "model_flow_euler50" in info["metrics"]
    assert json.loads((d / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "FlowMatchEulerDiscreteScheduler"
    # the bundled classifier and judge are reused byte for byte: both testbeds are judged alike
    for name in ("classifier.safetensors", "judge.safetensors"):
        assert (d / name).read_bytes() == (BUNDLED / name).read_bytes(), name
    model = load_model(str(d))
    assert isinstance(model.scheduler, FlowMatchEulerDiscreteScheduler) and model.judge is not None
    images = sample_images(model, torch.randn(3, *model.sample_shape), [0, 1, 2], steps=3)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()


def test_an_unknown_objective_is_refused():
    with pytest.raises(UsageError, match="--objective must be one of diffusion, flow"):
        TrainTestbedConfig(objective="score").check()


def test_the_diffusion_objective_still_saves_ddim():
    assert isinstance(sampling_scheduler("diffusion"), DDIMScheduler)
    assert isinstance(load_digits_model(BUNDLED).scheduler, DDIMScheduler)


def test_bundled_digits_flow_draws_the_asked_digits():
    model = load_model("digits-flow")
    assert isinstance(model.scheduler, FlowMatchEulerDiscreteScheduler) and model.info["objective"] == "flow"
    assert model.unet.num_parameters() == load_model("digits").unet.num_parameters()
    labels = torch.arange(10).repeat_interleave(3)
    noise = torch.randn(len(labels), *model.sample_shape, generator=torch.Generator().manual_seed(0))
    images = sample_images(model, noise, labels.tolist(), steps=10)
    assert images.min() >= -1.05 and images.max() <= 1.05
    assert metrics.conditional_accuracy(model.classifier, images, labels) >= 0.9
    assert float((model.judge(images).argmax(1) == labels).float().mean()) >= 0.8  # a second opinion


@pytest.mark.parametrize("command", ["latent", "demo"])
def test_latent_and_demo_run_on_digits_flow(command, tmp_path, capsys):
    out = tmp_path / command
    assert main([command, "--model", "digits-flow", "--steps", "3", "--iters", "2", "--batch", "2",
                 "--no-progress", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in rows] == [0, 1] and all(torch.isfinite(torch.tensor(row["reward"])) for row in rows)
    assert json.loads((out / "config.json").read_text())["model"] == "digits-flow"
    assert (out / "final.safetensors").is_file()
