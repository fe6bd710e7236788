"""Regression tests of the correctness audit: per-step noise, inversion scale, full-batch
unconditional embeddings with per-sample plans, DDIM with ``clip_sample``."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import generate, get_estimator, load_model, make_scheduler, sample
from shortcut_diffusion.sampling.inversion import ddim_invert
from shortcut_diffusion.models import ClassifierFreeGuidance, UNet2DDenoiser
from shortcut_diffusion.tasks.latent.optimize import optimize_latent
from shortcut_diffusion.rewards import get_reward

from conftest import class_cond, latent

STOCHASTIC = {"ddpm": {}, "euler-a": {}, "ddim-eta": {"eta": 1.0}}


def zero(x, t, cond):
    return torch.zeros_like(x)


def _scheduler(name):
    return make_scheduler("ddim" if name == "ddim-eta" else name, like=make_scheduler("ddpm"))


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_a_later_step_does_not_repeat_the_noise_of_an_earlier_one(name):
    """The issue's reproduction: step 0 of a call from the start and step 5 of a call resuming
    there, both with seed 7. The difference of two seeds cancels the deterministic part of a step
    and leaves its noise."""
    s, kwargs = _scheduler(name), STOCHASTIC[name]
    x = latent()

    def noise(start: int) -> torch.Tensor:
        with torch.no_grad():
            a, b = (sample(zero, s, x, steps=10, start=start, stop=start + 1, generator=g, step_kwargs=kwargs).sample
                    for g in (7, 8))
        return (a - b).flatten()

    cosine = torch.nn.functional.cosine_similarity(noise(0), noise(5), dim=0)
    assert abs(float(cosine)) < 0.2


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_a_run_split_at_the_warmup_equals_the_unsplit_run(name, tiny):
    s, kwargs = make_scheduler("ddim" if name == "ddim-eta" else name, like=tiny.scheduler), STOCHASTIC[name]
    cond = class_cond(tiny)
    with torch.no_grad():
        whole = sample(tiny.denoiser(), s, latent(), steps=6, cond=cond, generator=11, step_kwargs=kwargs).sample
        mid = sample(tiny.denoiser(), s, latent(), steps=6, stop=3, cond=cond, generator=11, step_kwargs=kwargs).sample
        rest = sample(tiny.denoiser(), s, mid, steps=6, start=3, cond=cond, generator=11, step_kwargs=kwargs).sample
    torch.testing.assert_close(rest, whole)


def test_latent_warmup_on_a_stochastic_sampler_starts_from_the_unsplit_samples(tiny):
    labels = torch.tensor([1, 2])
    result = optimize_latent(tiny, get_reward("ink"), labels, scheduler="ddpm", steps=6, warmup=3, iters=1,
                             seed=5, progress=False)
    noise = torch.randn((2, *tiny.sample_shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        unsplit = generate(tiny, noise, labels.tolist(), steps=6, scheduler=make_scheduler("ddpm", like=tiny.scheduler),
                           seed=6).images
    torch.testing.assert_close(result.start_images, unsplit)


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp-2m", "unipc"])
@pytest.mark.parametrize("start", [0, 10])
def test_inversion_then_sampling_reconstructs_the_image_with_every_deterministic_scheduler(digits, name, start):
    from shortcut_diffusion.models.testbed import data

    images = torch.stack([data.digit_image(i) for i in range(4)])
    labels = [int(data.load("all").labels[i]) for i in range(4)]
    s = make_scheduler(name, like=digits.scheduler)
    z = ddim_invert(digits.denoiser(), s, images, steps=20, start=start, cond=digits.conditioning(labels))
    with torch.no_grad():
        rebuilt = generate(digits, z, labels, steps=20, scheduler=s, start=start).images
    assert (rebuilt - images).abs().mean() < 0.03


@pytest.mark.parametrize("name", ["euler", "euler-a"])
def test_inversion_hands_sigma_scaled_samplers_their_scale(digits, name):
    """At step 10 of 20, Euler's latent is the DDIM latent over sqrt(abar) at that step."""
    from shortcut_diffusion.sampling.inversion import noise_levels
    from shortcut_diffusion.sampling.schedulers import fresh_scheduler
    from shortcut_diffusion.models.testbed import data

    image = data.digit_image(0)[None]
    cond = digits.conditioning([0])
    euler = make_scheduler(name, like=digits.scheduler)
    z_euler = ddim_invert(digits.denoiser(), euler, image, steps=20, start=10, cond=cond)
    abar = noise_levels(fresh_scheduler(euler, 20))[10]
    # the variance-preserving latent on Euler's own timesteps, inverted with the sigma scale undone
    ratio = z_euler.norm() * abar.sqrt() / ddim_invert(digits.denoiser(), make_scheduler("ddim", like=euler,
                                                       timestep_spacing=euler.config.timestep_spacing), image,
                                                       steps=20, start=10, cond=cond).norm()
    assert float(abar.rsqrt()) > 1.2 and float(ratio) == pytest.approx(1.0, rel=0.05)


def test_a_full_batch_unconditional_embedding_works_with_per_sample_plans(tiny):
    batch = 3
    cond = class_cond(tiny, batch)
    uncond_rows = tiny.embeddings(torch.full((batch,), 9)).detach()
    full_batch = ClassifierFreeGuidance(UNet2DDenoiser(tiny.unet), uncond_rows, scale=2.0)
    broadcast = ClassifierFreeGuidance(UNet2DDenoiser(tiny.unet), uncond_rows[:1], scale=2.0)
    grads = []
    for denoiser in (full_batch, broadcast):
        x = latent(batch).requires_grad_(True)
        out = sample(denoiser, tiny.scheduler, x, steps=4, cond=cond, per_sample=True,
                     estimator=get_estimator("sdo:keep=random", seed=3))
        assert out.plans is not None and len(set(out.plans)) > 1  # the rows kept different steps
        (grad,) = torch.autograd.grad(out.sample.square().sum(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1])  # identical rows: identical gradients


def test_ddim_with_clip_sample_samples_what_the_pipeline_samples_and_offers_the_authors_variant():
    """Decision: the sampler is diffusers' DDIM step as ``DDIMPipeline`` calls it (the model output
    is not recomputed from the clipped x0), so that SDO's forward pass is the sample users get and
    its gradient is that step's derivative with the network output held constant. The authors'
    ``use_clipped_model_output=True`` is another sampler; it stays available as a step argument."""
    from shortcut_diffusion.models import toy_model

    toy = toy_model(seed=0, channels=(8, 16))
    s = make_scheduler("ddim", like=toy.scheduler, clip_sample=True, clip_sample_range=0.5)
    cond = class_cond(toy, 1)

    def denoiser(x, t, c=None):
        return toy.unet(x, t, class_labels=cond).sample * 3  # large outputs: x0 is clipped

    x = latent(1).requires_grad_(True)
    out = sample(denoiser, s, x, steps=4, estimator=get_estimator("sdo"))
    (grad,) = torch.autograd.grad(out.sample.square().sum(), x)
    with torch.no_grad():
        clipped = sample(denoiser, s, x, steps=4, step_kwargs={"use_clipped_model_output": True}).sample

    # DDIMPipeline's loop (use_clipped_model_output=None), by hand, with SDO's detach placement
    reference = type(s).from_config(s.config)
    reference.set_timesteps(4)
    image = x
    for i, t in enumerate(reference.timesteps):
        output = denoiser(image, t) if i == 0 else denoiser(image, t).detach()
        image = reference.step(output, t, image, eta=0.0, use_clipped_model_output=None).prev_sample
    (expected_grad,) = torch.autograd.grad(image.square().sum(), x)
    torch.testing.assert_close(out.sample, image)
    torch.testing.assert_close(grad, expected_grad)
    assert (out.sample - clipped).abs().max() > 1e-3  # the variants differ once clipping is active


def test_alignprop_is_the_published_recipe_by_default():
    """Checkpointing on, and the truncation drawn at every step as the authors' training script
    does: step i keeps its graph iff a fresh T ~ U[0, N] is <= i, so late steps are kept more often.
    The per-call draw (last K steps) stays available as draw=call, without checkpointing as
    checkpoint=0."""
    from shortcut_diffusion.sampling.loop import Mode

    default = get_estimator("alignprop", seed=0)
    assert default.checkpoint and default.spec == "alignprop"
    steps, calls = 10, 4000
    kept = torch.zeros(steps)
    for _ in range(calls):
        modes = default.plan(steps).modes
        assert set(modes) <= {Mode.CHECKPOINT, Mode.DETACH}
        kept += torch.tensor([m is Mode.CHECKPOINT for m in modes], dtype=torch.float)
    expected = (torch.arange(steps) + 1) / (steps + 1)
    torch.testing.assert_close(kept / calls, expected, atol=0.03, rtol=0)
    # the old behaviour, by name: the last K steps of each call, no checkpointing
    old = get_estimator("alignprop:draw=call,checkpoint=0", seed=0)
    assert old.spec == "alignprop:draw=call,checkpoint=0"
    for _ in range(20):
        modes = old.plan(steps).modes
        k = modes.count(Mode.GRAD)
        assert modes == (Mode.DETACH,) * (steps - k) + (Mode.GRAD,) * k and 1 <= k <= steps


def test_alignprop_default_saves_checkpoint_placeholders_only(tiny):
    """With checkpointing, the kept steps save (almost) nothing but their inputs."""
    from shortcut_diffusion.meters import SavedTensorMeter

    cond = class_cond(tiny)
    saved = {}
    for spec in ("alignprop:low=0,high=0", "alignprop:low=0,high=0,checkpoint=0"):  # T = 0: every step kept
        x = latent().requires_grad_(True)
        with SavedTensorMeter(exclude=list(tiny.unet.parameters())) as meter:
            sample(tiny.denoiser(), tiny.scheduler, x, steps=4, cond=cond, estimator=get_estimator(spec))
        saved[spec] = meter.bytes
    assert saved["alignprop:low=0,high=0"] < saved["alignprop:low=0,high=0,checkpoint=0"] / 5
