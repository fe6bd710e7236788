"""``--compile``: the steps that record no graph through torch.compile, the kept step eager.

Results equal the eager run within float tolerance; where compilation fails the run falls back
to eager with one warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from shortcut_diffusion import generate, get_estimator
from shortcut_diffusion.tasks.generate import CompiledDenoiser, compiled_denoiser
from shortcut_diffusion.models import toy_model


@pytest.fixture(scope="module")
def toy():
    model = toy_model(seed=0, channels=(8, 16))
    model.unet.requires_grad_(False)
    return model


def sdo_gradient(model, compile: bool):
    x = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = generate(model, x, [1, 2], steps=4, estimator=get_estimator("sdo"), compile=compile)
    (grad,) = torch.autograd.grad(out.images.square().mean(), x)
    return out.images.detach(), grad


def test_compiled_detached_steps_equal_eager(toy):
    eager_images, eager_grad = sdo_gradient(toy, compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compilation must work on this machine
        images, grad = sdo_gradient(toy, compile=True)
    torch.testing.assert_close(images, eager_images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)
    assert compiled_denoiser(toy).failure is None
    assert compiled_denoiser(toy) is compiled_denoiser(toy)  # compiled once per model and guidance


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(toy, monkeypatch):
    def broken(fn, **options):
        def call(*args):
            raise RuntimeError("no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    denoiser = CompiledDenoiser(toy.denoiser())
    x, t, cond = torch.randn(2, 1, 16, 16), torch.tensor(500), toy.conditioning([1, 2])
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="torch.compile is unavailable here .*no C\\+\\+ compiler"):
        first = denoiser(x, t, cond)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        second = denoiser(x, t, cond)  # no second warning
        expected = toy.denoiser()(x, t, cond)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
