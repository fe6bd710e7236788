"""The adjoint with recomputed states: exact where the backward ODE step is exact, and closer to
full backpropagation as N grows on a trained model (where the recomputed trajectory drifts)."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import get_estimator, load_model, make_scheduler, sample
from shortcut_diffusion.gradients.recomputed.adjoint import adjoint_gradient
from shortcut_diffusion.rewards import get_reward


def full_gradient(denoiser, scheduler, z, loss, steps, cond=None):
    z = z.clone().requires_grad_(True)
    out = sample(denoiser, scheduler, z, steps=steps, cond=cond, estimator=get_estimator("full"))
    value = loss(out.sample)
    return value.detach(), torch.autograd.grad(value, z)[0]


def test_exact_when_the_network_ignores_the_state():
    """eps depending on t only: inverting a DDIM step is exact, so the adjoint is full backpropagation."""
    table = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def denoiser(x, t, cond):
        return table[int(t)].expand_as(x) * 0.5

    scheduler = make_scheduler("ddim", like=make_scheduler("ddpm"), clip_sample=False)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.linspace(-1, 1, 64, dtype=torch.float64).view(1, 1, 8, 8)

    def loss(x):
        return (x - target).square().sum()

    value, grad, _, info, _ = adjoint_gradient(denoiser, scheduler, z, loss, steps=10)
    expected_value, expected = full_gradient(denoiser, scheduler, z, loss, 10)
    # (diffusers keeps the schedule in float32, the adjoint's coefficients are float64 of them)
    torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-9)
    assert info["drift"] < 1e-9


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


def test_on_a_trained_model_more_steps_drift_less_and_agree_more(digits):
    reward = get_reward("digit-class:7", model=digits)
    scheduler = make_scheduler("ddim", like=digits.scheduler)
    cond = digits.conditioning([1, 1])
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def loss(x):
        return -reward(x.clamp(-1, 1), torch.tensor([1, 1])).sum()

    cosines, drifts = [], []
    for steps in (5, 50):
        value, grad, _, info, _ = adjoint_gradient(digits.denoiser(), scheduler, z, loss, steps=steps, cond=cond)
        expected_value, expected = full_gradient(digits.denoiser(), scheduler, z, loss, steps, cond)
        torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-4)  # the same forward pass
        cosines.append(float(torch.nn.functional.cosine_similarity(grad.flatten(), expected.flatten(), dim=0)))
        drifts.append(info["drift"])
    assert cosines[1] > cosines[0] > 0.5 and drifts[1] < drifts[0]
