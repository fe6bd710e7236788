"""DDIM inversion, EDICT and the adjoint's chain step where diffusers' DDIM steps: from t to
``t - T // N`` whatever ``timestep_spacing``, also where N does not divide T."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from shortcut_diffusion.gradients.recomputed.adjoint import ddim_sample
from shortcut_diffusion.gradients.recomputed.edict import edict_schedule, edict_step
from shortcut_diffusion.sampling.inversion import ddim_invert
from shortcut_diffusion.sampling.loop import sample
from shortcut_diffusion.sampling.schedulers import step_levels

SPACINGS = ["leading", "linspace", "trailing"]
STEPS = [7, 10, 30]
SHAPE = (2, 1, 4, 4)
TABLE = torch.randn(1000, *SHAPE[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5
W = torch.randn(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.2


def constant(x, t, cond=None):
    """A network that ignores its input: its output depends on the timestep only."""
    return TABLE[int(t)].expand_as(x)


def linear(x, t, cond=None):
    """A network that does depend on its input."""
    return (x.flatten(1) @ W.T).view_as(x) + TABLE[int(t)]


def scheduler(spacing):
    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         timestep_spacing=spacing)


def diffusers_ddim(denoiser, spacing, x, steps):
    """diffusers' own DDIM sampling (eta 0). It takes its coefficients' square roots in float32,
    so chains agree with it to about 1e-6, where the next listed timestep is off by 0.1 and more."""
    sched = scheduler(spacing)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(denoiser(x, t), t, x).prev_sample
    return x


def noise():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_levels_are_where_the_ddim_step_goes(spacing, steps):
    sched = scheduler(spacing)
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod.double()
    for (before, after), t in zip(step_levels(sched), sched.timesteps.tolist()):
        prev = t - 1000 // steps
        assert before == pytest.approx(float(abar[t]), rel=1e-12)
        assert after == pytest.approx(float(abar[prev]) if prev >= 0 else float(sched.final_alpha_cumprod), rel=1e-12)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("start", [0, 3])
def test_inversion_is_exact_when_the_network_ignores_its_input(spacing, steps, start):
    image = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    z = ddim_invert(constant, scheduler(spacing), image, steps=steps, start=start)
    with torch.no_grad():
        back = sample(constant, scheduler(spacing), z, steps=steps, start=start).sample
    torch.testing.assert_close(back, image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_the_adjoint_chain_is_diffusers_ddim(spacing, steps):
    z = noise()
    expected = diffusers_ddim(linear, spacing, z, steps)
    torch.testing.assert_close(ddim_sample(linear, scheduler(spacing), z, steps=steps), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and so is the one sampling loop
        torch.testing.assert_close(sample(linear, scheduler(spacing), z, steps=steps).sample, expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_edict_chain_is_diffusers_ddim_when_the_network_ignores_its_input(spacing, steps):
    """EDICT's two chains stay equal when eps does not depend on them: each is then DDIM itself."""
    z = noise()
    x, y = z, z
    for step in edict_schedule(scheduler(spacing), steps):
        x, y = edict_step(constant, x, y, step, None)
    expected = diffusers_ddim(constant, spacing, z, steps)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
