"""The shared suite: every estimator x every scheduler on a tiny UNet."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import Mode, get_estimator, sample
from shortcut_diffusion.meters import CountingDenoiser

from conftest import ESTIMATOR_SPECS, class_cond, latent

STEPS = 4


@pytest.mark.parametrize("spec", ESTIMATOR_SPECS)
def test_estimator_on_every_scheduler(spec, scheduler_case, tiny):
    scheduler, step_kwargs = scheduler_case
    cond = class_cond(tiny)
    with torch.no_grad():
        reference = sample(tiny.denoiser(), scheduler, latent(), steps=STEPS, cond=cond,
                           generator=7, step_kwargs=step_kwargs).sample

    unet = tiny.unet
    unet.requires_grad_(True)  # weights target: every kept network call is differentiated
    try:
        x = latent().requires_grad_()
        counter = CountingDenoiser(tiny.denoiser())
        estimator = get_estimator(spec)
        out = sample(counter, scheduler, x, steps=STEPS, estimator=estimator, cond=cond,
                     generator=7, step_kwargs=step_kwargs)
        (-out.sample.square().mean()).backward()
        weight_grads = [p.grad for p in unet.parameters() if p.grad is not None]
    finally:
        unet.requires_grad_(False)
        unet.zero_grad(set_to_none=True)

    plan = out.plan
    kept = plan.graph_steps
    # Forward output: identical to plain no-grad sampling on the same noise (ReFL returns x0).
    if plan.x0_at is None:
        torch.testing.assert_close(out.sample, reference, rtol=0, atol=0)
    else:
        assert out.sample.shape == reference.shape
    # Evaluation counts follow the plan: recomputation adds forwards, only kept steps backward.
    assert counter.forward_count == plan.count(*Mode) + plan.count(Mode.CHECKPOINT)
    assert counter.backward_count == kept >= 1
    # Gradients exist and are finite.
    assert weight_grads and all(torch.isfinite(g).all() for g in weight_grads)
    if x.grad is not None:
        assert torch.isfinite(x.grad).all()
    # The latent receives a gradient exactly when the plan keeps a path back to step 0.
    run = plan.modes if plan.x0_at is None else plan.modes[: plan.x0_at + 1]
    reaches_latent = Mode.STOP not in run
    assert (x.grad is not None and bool(x.grad.abs().sum() > 0)) == reaches_latent
