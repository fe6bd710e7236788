"""DRTune against SDO: exactly where the two estimators agree and where they differ."""

from __future__ import annotations

import copy

import pytest
import torch

from shortcut_diffusion import Mode, Plan, get_estimator, sample

from conftest import class_cond, latent

STEPS = 4


def weight_gradient(model, plan: Plan) -> torch.Tensor:
    model.unet.requires_grad_(True)
    model.unet.zero_grad(set_to_none=True)
    out = sample(model.denoiser(), model.scheduler, latent().double(), steps=STEPS, estimator=plan,
                 cond=class_cond(model).double())
    (out.sample - 0.3).square().sum().backward()
    grad = torch.cat([p.grad.flatten() for p in model.unet.parameters() if p.grad is not None])
    model.unet.requires_grad_(False)
    return grad


def plan_of(kept: dict[int, Mode]) -> Plan:
    return Plan(tuple(kept.get(i, Mode.DETACH) for i in range(STEPS)))


@pytest.mark.parametrize("step", range(STEPS))
def test_one_kept_step_gives_the_weights_the_sdo_gradient(tiny64, step):
    drtune = weight_gradient(tiny64, plan_of({step: Mode.INPUT_STOP}))
    sdo = weight_gradient(tiny64, get_estimator(f"sdo:keep={step}").plan(STEPS))
    torch.testing.assert_close(drtune, sdo, rtol=1e-10, atol=1e-12)


def test_several_kept_steps_drop_the_path_through_later_inputs(tiny64):
    both = weight_gradient(tiny64, plan_of({1: Mode.INPUT_STOP, 3: Mode.INPUT_STOP}))
    separate = weight_gradient(tiny64, plan_of({1: Mode.INPUT_STOP})) + weight_gradient(tiny64, plan_of({3: Mode.INPUT_STOP}))
    torch.testing.assert_close(both, separate, rtol=1e-10, atol=1e-12)  # DRTune: the sum of one-step gradients
    sdo = weight_gradient(tiny64, plan_of({1: Mode.GRAD, 3: Mode.GRAD}))
    assert (sdo - both).norm() > 1e-6 * sdo.norm()  # SDO keeps the cross term through step 3's input


def test_the_latent_sees_only_the_linear_path(tiny64):
    grads = []
    for plan in (get_estimator("drtune:k=2,select=uniform", seed=1).plan(STEPS), plan_of({})):
        x = latent().double().requires_grad_(True)
        out = sample(tiny64.denoiser(), tiny64.scheduler, x, steps=STEPS, estimator=plan, cond=class_cond(tiny64).double())
        (grad,) = torch.autograd.grad((out.sample - 0.3).square().sum(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_drtune_spec_draws_k_steps_and_samples_what_full_samples(tiny64):
    estimator = get_estimator("drtune:k=2,select=uniform", seed=3)
    plans = [estimator.plan(10) for _ in range(20)]
    assert all(p.count(Mode.INPUT_STOP) == 2 and p.graph_steps == 2 for p in plans)
    assert len({p.modes for p in plans}) > 1
    assert get_estimator("drtune:k=2,keep=last").plan(4).modes == (Mode.DETACH,) * 2 + (Mode.INPUT_STOP,) * 2
    model = copy.deepcopy(tiny64)
    model.unet.requires_grad_(True)
    cond = class_cond(model).double()
    ours = sample(model.denoiser(), model.scheduler, latent().double(), steps=STEPS, estimator=get_estimator("drtune:select=uniform"),
                  cond=cond).sample
    with torch.no_grad():
        plain = sample(model.denoiser(), model.scheduler, latent().double(), steps=STEPS, cond=cond).sample
    torch.testing.assert_close(ours.detach(), plain, rtol=0, atol=0)


def test_published_selection_is_evenly_spaced_from_an_offset_and_stops_early():
    estimator = get_estimator("drtune", seed=5)
    plans = [estimator.plan(25) for _ in range(40)]
    for plan in plans:
        kept = [i for i, m in enumerate(plan.modes) if m is Mode.INPUT_STOP]
        assert 15 <= plan.x0_at <= 24 and len(kept) == 3 and max(kept) <= plan.x0_at
        assert kept[1] - kept[0] == kept[2] - kept[1] == (plan.x0_at + 1) // 3
    assert len({p.x0_at for p in plans}) > 3 and len({p.modes for p in plans}) > 3
    assert get_estimator("drtune:stop=0").plan(6).x0_at == 5
    assert get_estimator("drtune:keep=random").spec == "drtune:select=uniform"
