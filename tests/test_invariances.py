"""Configurations that must give the same gradient (to float tolerance)."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import get_estimator, sample

from conftest import class_cond, latent

STEPS = 5


def latent_gradient(denoiser, scheduler, estimator, step_kwargs, cond=None, seed=0):
    x = latent(seed=seed).double().requires_grad_()
    out = sample(denoiser, scheduler, x, steps=STEPS, estimator=estimator, cond=cond,
                 generator=3, step_kwargs=step_kwargs)
    loss = (out.sample - 0.3).square().sum()
    (grad,) = torch.autograd.grad(loss, x)
    return out.sample.detach(), grad


@pytest.mark.parametrize("spec", ["truncated:k=all", "truncated:k=5", "checkpointed", "alignprop:draw=call,low=5", "alignprop:low=0,high=0",
                                  "sdo:k=all", "sdo:k=5,keep=random", "full:checkpoint=1"])
def test_equivalent_to_full(spec, scheduler_case, tiny64):
    scheduler, step_kwargs = scheduler_case
    cond = class_cond(tiny64)
    ref_x, ref_g = latent_gradient(tiny64.denoiser(), scheduler, get_estimator("full"), step_kwargs, cond)
    x, g = latent_gradient(tiny64.denoiser(), scheduler, get_estimator(spec), step_kwargs, cond)
    torch.testing.assert_close(x, ref_x, rtol=0, atol=0)
    torch.testing.assert_close(g, ref_g, rtol=1e-10, atol=1e-12)


def test_sdo_equals_full_when_the_network_ignores_x(scheduler_case):
    """With eps independent of x, only the linear path carries gradient: the shortcut is exact."""
    scheduler, step_kwargs = scheduler_case
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(1000, 1, 16, 16, generator=gen, dtype=torch.float64)

    def denoiser(x, t, cond):  # depends on t only (and so on nothing being optimized)
        index = int(torch.as_tensor(t).round().clamp(0, 999))
        return table[index].expand_as(x) * 0.5

    for spec in ["sdo", "sdo:keep=last", "sdo:keep=random", "alignprop"]:
        ref_x, ref_g = latent_gradient(denoiser, scheduler, get_estimator("full"), step_kwargs)
        x, g = latent_gradient(denoiser, scheduler, get_estimator(spec), step_kwargs)
        torch.testing.assert_close(x, ref_x, rtol=0, atol=0)
        torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-12)
