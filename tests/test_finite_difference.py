"""``full`` is the exact gradient: it matches central finite differences (float64, tiny UNet)."""

from __future__ import annotations

import copy

import torch

from shortcut_diffusion import get_estimator, make_scheduler, sample

from conftest import class_cond, latent


def test_full_gradient_matches_finite_differences(tiny):
    model = copy.deepcopy(tiny)
    model.unet.double()
    cond = class_cond(model).double()
    # DDIM computes in the sample's dtype (DPM-Solver and Euler upcast to float32, too coarse here).
    scheduler = make_scheduler("ddim", like=model.scheduler)
    target = latent(seed=9).double()

    def reward(x):
        out = sample(model.denoiser(), scheduler, x, steps=4, estimator=get_estimator("full"), cond=cond)
        return -(out.sample - target).square().mean()

    x = latent(seed=1).double().requires_grad_()
    (grad,) = torch.autograd.grad(reward(x), x)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        v /= v.norm()
        h = 1e-5
        with torch.no_grad():
            fd = (reward(x + h * v) - reward(x - h * v)) / (2 * h)
        torch.testing.assert_close(fd, (grad * v).sum(), rtol=1e-5, atol=1e-9)
