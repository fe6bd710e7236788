"""Pipeline adapters: tiny SD 1.x (epsilon, v), SDXL, SD3, Flux and DDPM pipelines saved with
save_pretrained and loaded through the public ``load_model(PATH)`` route.

For each family: the adapter's no-grad sample equals the pipeline's own ``__call__`` on the same
noise (same scheduler, same guidance), its decode equals the pipeline's images, and every
estimator gives finite gradients for the latent, the prompt embeddings and LoRA weights.
"""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import UsageError, get_estimator, make_scheduler, sample
from shortcut_diffusion.finetune.lora import add_lora
from shortcut_diffusion.models import load_model

import tiny_pipelines

STEPS = 3
PROMPT = "a photo of a cat"
SIZE = 16


@pytest.fixture(scope="session")
def pipeline_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {family: tiny_pipelines.build(family, root / family) for family in tiny_pipelines.FAMILIES}


def load(pipeline_dirs, family, **options):
    options = {"height": SIZE, "width": SIZE, **options} if family != "ddpm" else options
    return load_model(str(pipeline_dirs[family]), **options)


def noise_for(model, seed=0):
    return torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(seed))


def pipeline_call(model, noise, output_type, scheduler=None, **extra):
    pipe = model.pipe
    if scheduler is not None:
        pipe.scheduler = scheduler
    if model.family == "pixel":
        # DDPMPipeline draws its own starting noise from the generator: hand it the same stream.
        gen = torch.Generator().manual_seed(0)
        return pipe(num_inference_steps=STEPS, generator=gen, output_type="np" if output_type == "pt" else output_type).images
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, latents=noise.clone(), height=SIZE, width=SIZE,
                  output_type=output_type, generator=torch.Generator().manual_seed(1), **extra)
    if model.family != "flux":
        kwargs["guidance_scale"] = model.guidance_scale
    else:
        kwargs["guidance_scale"] = model.guidance_scale
    return pipe(**kwargs).images


@pytest.mark.parametrize("family", ["sd", "sd-v", "sdxl", "sd3", "flux"])
def test_adapter_equals_the_pipeline(pipeline_dirs, family):
    model = load(pipeline_dirs, family, guidance_scale=3.0)
    noise = noise_for(model)
    expected = pipeline_call(model, noise, "latent")
    with torch.no_grad():
        ours = sample(model.guided(), model.scheduler, noise, steps=STEPS, cond=model.cond([PROMPT]),
                      set_timesteps_kwargs=model.timestep_kwargs(STEPS)).sample
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    images = pipeline_call(model, noise, "pt")
    with torch.no_grad():
        decoded = ((model.decode(ours) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decoded, images, rtol=1e-4, atol=1e-5)


def test_pixel_unet_equals_ddpm_pipeline(pipeline_dirs):
    model = load(pipeline_dirs, "ddpm")
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((1, *model.sample_shape), generator=gen)
    with torch.no_grad():
        ours = sample(model.guided(), model.scheduler, noise, steps=STEPS, cond=model.cond([""]), generator=gen).sample
    expected = torch.from_numpy(pipeline_call(model, noise, "pt")).permute(0, 3, 1, 2)
    torch.testing.assert_close(((ours + 1) / 2).clamp(0, 1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheduler_name", ["euler", "dpmpp-2m", "unipc"])
def test_scheduler_by_name_on_sd_equals_the_pipeline(pipeline_dirs, scheduler_name):
    model = load(pipeline_dirs, "sd", guidance_scale=2.0, guidance_rescale=0.5)
    scheduler = make_scheduler(scheduler_name, like=model.scheduler)
    noise = noise_for(model, seed=3)
    expected = pipeline_call(model, noise, "latent", scheduler=scheduler, guidance_rescale=0.5)
    with torch.no_grad():
        ours = sample(model.guided(), scheduler, noise, steps=STEPS, cond=model.cond([PROMPT])).sample
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_negative_prompt_changes_the_unconditional_branch(pipeline_dirs):
    plain = load(pipeline_dirs, "sd", guidance_scale=3.0)
    negative = load(pipeline_dirs, "sd", guidance_scale=3.0, negative_prompt="blurry")
    noise = noise_for(plain)
    with torch.no_grad():
        a = sample(plain.guided(), plain.scheduler, noise, steps=STEPS, cond=plain.cond([PROMPT])).sample
        b = sample(negative.guided(), negative.scheduler, noise, steps=STEPS, cond=negative.cond([PROMPT])).sample
    assert (a - b).abs().max() > 1e-4
    expected = pipeline_call(negative, noise, "latent", negative_prompt="blurry")
    torch.testing.assert_close(b, expected, rtol=1e-4, atol=1e-5)


def test_prompts_are_encoded_once(pipeline_dirs):
    model = load(pipeline_dirs, "sd")
    calls = []
    encoder = model.pipe.text_encoder
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    model.cond([PROMPT, PROMPT, "a dog"])
    first = len(calls)
    model.cond(["a dog", PROMPT])
    hook.remove()
    assert first > 0 and len(calls) == first, "cached prompts must not be re-encoded"


ESTIMATORS = ["full", "checkpointed", "truncated:k=1", "alignprop", "refl", "sdo"]


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "ddpm"])
@pytest.mark.parametrize("target", ["latent", "embedding", "lora"])
def test_every_estimator_gives_finite_gradients(pipeline_dirs, family, target):
    if family == "ddpm" and target == "embedding":
        pytest.skip("an unconditional pixel model has no prompt embeddings")
    model = load(pipeline_dirs, family, guidance_scale=2.0)
    model.network.requires_grad_(False)
    params = []
    cond = model.cond([PROMPT, "a dog"]) if family != "ddpm" else None
    if target == "lora":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            params = add_lora(model.network, rank=2, targets=["to_q", "to_k", "to_v"])
        with torch.no_grad():
            for p in params:
                p.normal_(std=0.1)
    elif target == "embedding":
        cond = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        params = [cond["encoder_hidden_states"]]
    for spec in ESTIMATORS:
        x = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(0))
        if target == "latent":
            x.requires_grad_(True)
            params = [x]
        out = sample(model.guided(), model.scheduler, x, steps=STEPS, cond=cond, estimator=get_estimator(spec, seed=1),
                     set_timesteps_kwargs=model.timestep_kwargs(STEPS), per_sample=True)
        loss = model.decode(out.sample).float().square().mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
        assert torch.isfinite(flat).all(), (family, target, spec)
        if not (target == "latent" and spec in ("truncated:k=1", "refl")):  # those stop before the latent by design
            assert flat.abs().sum() > 0, (family, target, spec)


def test_missing_weights_and_bad_directories_are_clear_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="not a saved pipeline"):
        load_model(str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        load_model("no-such-org/no-such-model")


def test_bad_size_is_a_clear_error(pipeline_dirs):
    with pytest.raises(UsageError, match="multiples of"):
        load(pipeline_dirs, "flux", height=18)
