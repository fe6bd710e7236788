"""EDICT inverts its own sampling to float precision; DOODL's reconstructing backward pass equals
full backpropagation through the same EDICT chain."""

from __future__ import annotations

import copy

import pytest
import torch

from shortcut_diffusion import make_scheduler
from shortcut_diffusion.edict import doodl_gradient, edict_invert, edict_sample, renormalize

from conftest import class_cond, latent


@pytest.fixture(scope="module")
def toy64(tiny):
    model = copy.deepcopy(tiny)
    model.unet.double()
    model.embeddings.double()
    return model


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [3, 10])
def test_edict_inversion_reconstructs_its_input(toy64, prediction, steps):
    scheduler = make_scheduler("ddim", like=toy64.scheduler, prediction_type=prediction)
    z = latent().double()
    cond = class_cond(toy64).double()
    with torch.no_grad():
        x, y = edict_sample(toy64.denoiser(), scheduler, z, steps=steps, cond=cond)
    x0, y0 = edict_invert(toy64.denoiser(), scheduler, x, y, steps=steps, cond=cond)
    assert (x - z).abs().max() > 0.1  # sampling moved far from the noise
    torch.testing.assert_close(x0, z, rtol=0, atol=1e-9)
    torch.testing.assert_close(y0, z, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scheduler_name", ["ddim", "euler"])
def test_doodl_gradient_equals_full_backpropagation_through_edict(toy64, scheduler_name):
    scheduler = make_scheduler(scheduler_name, like=toy64.scheduler)
    cond = class_cond(toy64).double()
    target = torch.linspace(-1, 1, 256, dtype=torch.float64).view(1, 1, 16, 16)

    def loss(x):
        return (x - target).square().sum()

    z = latent().double().requires_grad_(True)
    x, _ = edict_sample(toy64.denoiser(), scheduler, z, steps=6, cond=cond)
    expected_value = loss(x)
    (expected,) = torch.autograd.grad(expected_value, z)
    value, grad, calls, x_final = doodl_gradient(toy64.denoiser(), scheduler, z.detach(), loss, steps=6, cond=cond)
    torch.testing.assert_close(value, expected_value.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, expected, rtol=1e-7, atol=1e-9)
    assert calls == {"forward": 36, "backward": 12}
    torch.testing.assert_close(x_final, x.detach(), rtol=0, atol=1e-9)


def test_renormalize_puts_noise_on_the_gaussian_shell():
    z = torch.randn(3, 1, 16, 16) * torch.tensor([0.5, 1.0, 3.0]).view(3, 1, 1, 1)
    norms = renormalize(z).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 16.0))
    torch.testing.assert_close(renormalize(z) / norms.view(3, 1, 1, 1), z / z.flatten(1).norm(dim=1).view(3, 1, 1, 1))


def test_doodl_latent_optimization_raises_the_reward():
    from shortcut_diffusion import load_model
    from shortcut_diffusion.doodl import optimize_doodl
    from shortcut_diffusion.rewards import get_reward

    model = load_model("digits")
    result = optimize_doodl(model, get_reward("digit-class:7", model=model), [1, 1], steps=6, iters=4, lr=0.2,
                            progress=False)
    assert result.rewards.mean() > result.start_rewards.mean()
    norms = result.latents.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 8.0))  # renormalised onto the shell of 8x8 noise
    assert all(row["nfe_backward"] == 12 for row in result.history)


def test_sdo_latent_method_doodl(tmp_path, capsys):
    import json

    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    assert main(["latent", "--method", "doodl", "--model", "toy", "--reward", "ink", "--cond", "3", "--steps", "3",
                 "--iters", "2", "--batch", "2", "--no-progress", "--grid-every", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nfe_backward"] for r in rows] == [6, 6]
    assert json.loads((out / "config.json").read_text())["method"] == "doodl"
