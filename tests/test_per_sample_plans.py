"""Per-sample plans: a batch whose rows keep different steps equals its rows sampled one by one."""

from __future__ import annotations

import copy

import pytest
import torch

from shortcut_diffusion import get_estimator, sample
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Mode, Plan

from conftest import SCHEDULER_CASES, class_cond, latent

STEPS = 6
BATCH = 4


@pytest.fixture(scope="module")
def tiny64(tiny):
    model = copy.deepcopy(tiny)
    model.unet.double().requires_grad_(True)
    return model


def weight_grads(model, scheduler, estimator_or_plans, x, cond, step_kwargs):
    model.unet.zero_grad(set_to_none=True)
    out = sample(model.denoiser(), scheduler, x, steps=STEPS, estimator=estimator_or_plans, cond=cond,
                 generator=1, step_kwargs=step_kwargs)
    (out.sample - 0.2).square().sum().backward()
    return out, torch.cat([p.grad.flatten() for p in model.unet.parameters() if p.grad is not None])


@pytest.mark.parametrize("spec", ["sdo:keep=random", "alignprop", "refl:low=0.2", "sdo:k=2,keep=random"])
@pytest.mark.parametrize("case", ["ddim", "euler", "dpmpp-2m"])
def test_batch_of_per_sample_plans_equals_rows_one_by_one(spec, case, tiny64):
    from shortcut_diffusion import make_scheduler

    name, step_kwargs = SCHEDULER_CASES[case]
    scheduler = make_scheduler(name, like=tiny64.scheduler)
    estimator = get_estimator(spec, seed=5)
    plans = [estimator.plan(STEPS) for _ in range(BATCH)]
    assert len(set(plans)) > 1, "the test needs rows with different plans"
    x = latent(BATCH).double()
    cond = class_cond(tiny64, BATCH).double()

    batched, grad = weight_grads(tiny64, scheduler, plans, x, cond, step_kwargs)
    assert batched.plans == tuple(plans)
    rows, grads = [], []
    for r, plan in enumerate(plans):
        out, g = weight_grads(tiny64, scheduler, plan, x[r : r + 1], cond[r : r + 1], step_kwargs)
        rows.append(out.sample)
        grads.append(g)
    torch.testing.assert_close(batched.sample, torch.cat(rows), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grad, torch.stack(grads).sum(0), rtol=1e-7, atol=1e-10)


def test_per_sample_draws_one_plan_per_row(tiny):
    x = latent(BATCH).requires_grad_()
    out = sample(tiny.denoiser(), tiny.scheduler, x, steps=STEPS, estimator=get_estimator("sdo:keep=random", seed=2),
                 cond=class_cond(tiny, BATCH), per_sample=True)
    assert out.plans is not None and len(out.plans) == BATCH
    kept = [p.modes.index(Mode.GRAD) for p in out.plans]
    assert len(set(kept)) > 1
    shared = sample(tiny.denoiser(), tiny.scheduler, x, steps=STEPS, estimator=get_estimator("sdo:keep=random", seed=2),
                    cond=class_cond(tiny, BATCH))
    assert shared.plans is None


def test_stopped_rows_get_no_gradient(tiny):
    x = latent(2).requires_grad_()
    plans = [Plan((Mode.GRAD,) * STEPS), Plan((Mode.STOP,) + (Mode.GRAD,) * (STEPS - 1))]
    out = sample(tiny.denoiser(), tiny.scheduler, x, steps=STEPS, estimator=plans, cond=class_cond(tiny))
    (grad,) = torch.autograd.grad(out.sample.sum(), x)
    assert grad[0].abs().sum() > 0
    assert grad[1].abs().sum() == 0


def test_wrong_number_of_plans_is_a_clear_error(tiny):
    with pytest.raises(UsageError, match="one Plan per sample"):
        sample(tiny.denoiser(), tiny.scheduler, latent(3), steps=STEPS, cond=class_cond(tiny, 3),
               estimator=[Plan.uniform(Mode.GRAD, STEPS)] * 2)
