"""Bad input gives one clear UsageError naming the bad value, before any work."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import Mode, Plan, UsageError, get_estimator, make_scheduler, sample
from shortcut_diffusion.cli import main

from conftest import class_cond, latent


@pytest.mark.parametrize("spec,message", [
    ("nope", "unknown estimator 'nope'"),
    ("sdo:keep=middle", "keep='middle'"),
    ("sdo:kept=1", "has no option kept"),
    ("truncated:k", "must look like key=value"),
    ("alignprop:dist=beta", "unknown dist 'beta'"),
    ("alignprop:draw=epoch", "unknown draw 'epoch'"),
    ("alignprop:dist=gaussian,mean=3", "use it with draw=call"),
    ("refl:low=0.9,high=0.5", "low=0.9"),
])
def test_bad_estimator_specs(spec, message):
    with pytest.raises(UsageError, match=message):
        get_estimator(spec)


@pytest.mark.parametrize("spec,message", [
    ("truncated:k=0", "k=0 is out of range 1..5"),
    ("truncated:k=6", "k=6 is out of range 1..5"),
    ("sdo:keep=7", "keep=7 is out of range"),
    ("sdo:k=9,keep=random", "k=9 is out of range"),
    ("alignprop:high=8", "high=8 is out of range 0..5"),
    ("alignprop:draw=call,high=8", "k=8 is out of range"),
])
def test_k_out_of_range(spec, message):
    with pytest.raises(UsageError, match=message):
        get_estimator(spec).plan(5)


def test_unknown_scheduler():
    with pytest.raises(UsageError, match="unknown scheduler 'heun-9'"):
        make_scheduler("heun-9")


def test_wrong_output_shape(tiny):
    def bad(x, t, cond):
        return x[:, :, :8]

    with pytest.raises(UsageError, match=r"returned shape \(2, 1, 8, 16\) for a sample of shape \(2, 1, 16, 16\)"):
        sample(bad, tiny.scheduler, latent(), steps=2)


def test_denoiser_returning_a_model_output_object(tiny):
    def raw(x, t, cond):
        return tiny.unet(x, t, class_labels=cond)

    with pytest.raises(UsageError, match="must return a tensor, got UNet2DOutput"):
        sample(raw, tiny.scheduler, latent(), steps=2, cond=class_cond(tiny))


def test_nothing_requires_grad(tiny):
    with pytest.raises(UsageError, match="nothing to differentiate requires grad"):
        sample(tiny.denoiser(), tiny.scheduler, latent(), steps=2, estimator=get_estimator("sdo"),
               cond=class_cond(tiny))
    with torch.no_grad():  # the same call is fine for plain sampling
        sample(tiny.denoiser(), tiny.scheduler, latent(), steps=2, estimator=get_estimator("sdo"),
               cond=class_cond(tiny))


def test_plan_of_the_wrong_length(tiny):
    with pytest.raises(UsageError, match="plan has 3 steps but 4 steps are sampled"):
        sample(tiny.denoiser(), tiny.scheduler, latent().requires_grad_(), steps=4,
               estimator=Plan.uniform(Mode.GRAD, 3), cond=class_cond(tiny))


def test_bad_ranges(tiny):
    with pytest.raises(UsageError, match="start=3, stop=2"):
        sample(tiny.denoiser(), tiny.scheduler, latent(), steps=4, start=3, stop=2)
    with pytest.raises(UsageError, match="steps must be a positive integer, got 0"):
        sample(tiny.denoiser(), tiny.scheduler, latent(), steps=0)
    with pytest.raises(UsageError, match="does not accept eta"):
        sample(tiny.denoiser(), make_scheduler("ddpm"), latent(), steps=2, step_kwargs={"eta": 1.0})


@pytest.mark.parametrize("argv,message", [
    (["gradcheck", "--estimators", "sdo", "magic"], "unknown estimator 'magic'"),
    (["gradcheck", "--estimators", "truncated:k=99", "--steps", "3"], "k=99 is out of range 1..3"),
    (["gradcheck", "--model", "sd-9"], "unknown model 'sd-9'"),
    (["gradcheck", "--reward", "beauty"], "unknown reward 'beauty'"),
    (["gradcheck", "--steps", "0"], "--steps must be >= 1, got 0"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdo: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
