"""EDICT inverts its own sampling to float precision; DOODL's reconstructing backward pass equals
full backpropagation through the same EDICT chain."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import make_scheduler
from shortcut_diffusion.gradients.recomputed.edict import doodl_gradient, edict_invert, edict_sample, renormalize

from conftest import class_cond, latent


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [3, 10])
def test_edict_inversion_reconstructs_its_input(tiny64, prediction, steps):
    scheduler = make_scheduler("ddim", like=tiny64.scheduler, prediction_type=prediction)
    z = latent().double()
    cond = class_cond(tiny64).double()
    with torch.no_grad():
        x, y = edict_sample(tiny64.denoiser(), scheduler, z, steps=steps, cond=cond)
    x0, y0 = edict_invert(tiny64.denoiser(), scheduler, x, y, steps=steps, cond=cond)
    assert (x - z).abs().max() > 0.1  # sampling moved far from the noise
    torch.testing.assert_close(x0, z, rtol=0, atol=1e-9)
    torch.testing.assert_close(y0, z, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scheduler_name", ["ddim", "euler"])
def test_doodl_gradient_equals_full_backpropagation_through_edict(tiny64, scheduler_name):
    scheduler = make_scheduler(scheduler_name, like=tiny64.scheduler)
    cond = class_cond(tiny64).double()
    target = torch.linspace(-1, 1, 256, dtype=torch.float64).view(1, 1, 16, 16)

    def loss(x):
        return (x - target).square().sum()

    z = latent().double().requires_grad_(True)
    x, _ = edict_sample(tiny64.denoiser(), scheduler, z, steps=6, cond=cond)
    expected_value = loss(x)
    (expected,) = torch.autograd.grad(expected_value, z)
    value, grad, _, calls, x_final = doodl_gradient(tiny64.denoiser(), scheduler, z.detach(), loss, steps=6, cond=cond)
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
    from shortcut_diffusion.tasks.latent.optimize import optimize_latent
    from shortcut_diffusion.rewards import get_reward

    model = load_model("digits")
    result = optimize_latent(model, get_reward("digit-class:7", model=model), [1, 1], estimator="doodl", steps=6,
                             iters=4, lr=0.2, progress=False)
    assert result.rewards.mean() > result.start_rewards.mean()
    norms = result.latents.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 8.0))  # renormalised onto the shell of 8x8 noise
    assert all(row["nfe_backward"] == 12 for row in result.history)


@pytest.mark.parametrize("method, backward", [("doodl", 6), ("adjoint", 3)])
def test_sdo_latent_estimator_doodl_and_adjoint(tmp_path, method, backward):
    import json

    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    assert main(["latent", "--estimator", method, "--model", "toy", "--reward", "ink", "--cond", "3", "--steps", "3",
                 "--iters", "2", "--batch", "2", "--no-progress", "--grid-every", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nfe_backward"] for r in rows] == [backward, backward]
    assert all(r["saved_bytes"] > 0 for r in rows)
    assert json.loads((out / "config.json").read_text())["estimator_spec"] == method


@pytest.mark.parametrize("what", ["cond", "weights"])
def test_doodl_and_adjoint_give_conditioning_and_weight_gradients_of_their_chains(tiny64, what):
    """With ``params``, DOODL's reconstructing pass equals full backpropagation through EDICT for
    them too; the adjoint's is the exact gradient of DDIM when the network ignores the state, and
    here (it does not) a close one."""
    from shortcut_diffusion.gradients.recomputed.adjoint import adjoint_gradient, ddim_sample

    scheduler = make_scheduler("ddim", like=tiny64.scheduler)
    cond = class_cond(tiny64).double()
    if what == "cond":
        cond = cond.clone().requires_grad_(True)
        params = [cond]
    else:
        params = list(tiny64.unet.parameters())[-4:]
        for p in params:
            p.requires_grad_(True)
    target = torch.linspace(-1, 1, 256, dtype=torch.float64).view(1, 1, 16, 16)

    def loss(x):
        return (x - target).square().sum()

    try:
        z = latent().double()
        for gradient, chain, tolerance in [(doodl_gradient, lambda: edict_sample(tiny64.denoiser(), scheduler, z, steps=5, cond=cond)[0], 1e-7),
                                           (adjoint_gradient, lambda: ddim_sample(tiny64.denoiser(), scheduler, z, steps=5, cond=cond), None)]:
            expected = torch.autograd.grad(loss(chain()), params)
            got = gradient(tiny64.denoiser(), scheduler, z, loss, steps=5, cond=cond, params=params).param_grads
            flat, ref = torch.cat([g.flatten() for g in got]), torch.cat([g.flatten() for g in expected])
            if tolerance is not None:
                torch.testing.assert_close(flat, ref, rtol=tolerance, atol=1e-9)
            else:
                assert float(torch.nn.functional.cosine_similarity(flat, ref, dim=0)) > 0.9
    finally:
        tiny64.unet.requires_grad_(False)
