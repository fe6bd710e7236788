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
from shortcut_diffusion.tasks.finetune.lora import add_lora
from shortcut_diffusion import load_model

STEPS = 3
PROMPT = "a photo of a cat"
SIZE = 16


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
    return pipe(prompt=PROMPT, num_inference_steps=STEPS, latents=noise.clone(), height=SIZE, width=SIZE,
                output_type=output_type, generator=torch.Generator().manual_seed(1),
                guidance_scale=model.guidance_scale, **extra).images


@pytest.mark.parametrize("family", ["sd", "sd-v", "sdxl", "sd3", "flux"])
def test_adapter_equals_the_pipeline(pipeline_dirs, family):
    model = load(pipeline_dirs, family, guidance_scale=3.0)
    noise = noise_for(model)
    expected = pipeline_call(model, noise, "latent")
    with torch.no_grad():
        ours = sample(model.denoiser(), model.scheduler, noise, steps=STEPS, cond=model.conditioning([PROMPT]),
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
        ours = sample(model.denoiser(), model.scheduler, noise, steps=STEPS, cond=model.conditioning([""]), generator=gen).sample
    expected = torch.from_numpy(pipeline_call(model, noise, "pt")).permute(0, 3, 1, 2)
    torch.testing.assert_close(((ours + 1) / 2).clamp(0, 1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheduler_name", ["euler", "dpmpp-2m", "unipc"])
def test_scheduler_by_name_on_sd_equals_the_pipeline(pipeline_dirs, scheduler_name):
    model = load(pipeline_dirs, "sd", guidance_scale=2.0, guidance_rescale=0.5)
    scheduler = make_scheduler(scheduler_name, like=model.scheduler)
    noise = noise_for(model, seed=3)
    expected = pipeline_call(model, noise, "latent", scheduler=scheduler, guidance_rescale=0.5)
    with torch.no_grad():
        ours = sample(model.denoiser(), scheduler, noise, steps=STEPS, cond=model.conditioning([PROMPT])).sample
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_negative_prompt_changes_the_unconditional_branch(pipeline_dirs):
    plain = load(pipeline_dirs, "sd", guidance_scale=3.0)
    negative = load(pipeline_dirs, "sd", guidance_scale=3.0, negative_prompt="blurry")
    noise = noise_for(plain)
    with torch.no_grad():
        a = sample(plain.denoiser(), plain.scheduler, noise, steps=STEPS, cond=plain.conditioning([PROMPT])).sample
        b = sample(negative.denoiser(), negative.scheduler, noise, steps=STEPS, cond=negative.conditioning([PROMPT])).sample
    assert (a - b).abs().max() > 1e-4
    expected = pipeline_call(negative, noise, "latent", negative_prompt="blurry")
    torch.testing.assert_close(b, expected, rtol=1e-4, atol=1e-5)


def test_prompts_are_encoded_once(pipeline_dirs):
    model = load(pipeline_dirs, "sd")
    calls = []
    encoder = model.pipe.text_encoder
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    model.conditioning([PROMPT, PROMPT, "a dog"])
    first = len(calls)
    model.conditioning(["a dog", PROMPT])
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
    cond = model.conditioning([PROMPT, "a dog"]) if family != "ddpm" else None
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
        out = sample(model.denoiser(), model.scheduler, x, steps=STEPS, cond=cond, estimator=get_estimator(spec, seed=1),
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


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "ddpm"])
def test_sdo_latent_on_a_saved_pipeline(pipeline_dirs, family, tmp_path):
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    args = ["latent", "--model", str(pipeline_dirs[family]), "--reward", "ink", "--steps", "4", "--iters", "2",
            "--batch", "2", "--out", str(out), "--no-progress", "--device", "cpu"]
    if family != "ddpm":
        args += ["--prompt", "a red cube", "--height", "16", "--width", "16"]
    assert main(args) == 0
    for name in ("config.json", "metrics.jsonl", "reward_curve.png", "before_after.png", "summary.json", "final.safetensors"):
        assert (out / name).is_file(), name
    final = load_file(out / "final.safetensors")
    assert final["images"].shape[1] == 3 and final["images"].abs().max() <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_reward"] != summary["start_reward"]


def test_text_to_image_model_needs_a_prompt(pipeline_dirs, tmp_path):
    from shortcut_diffusion.cli import main

    assert main(["latent", "--model", str(pipeline_dirs["sd"]), "--out", str(tmp_path / "r"), "--no-progress"]) == 2


def test_scheduler_must_fit_the_parameterization(pipeline_dirs):
    from shortcut_diffusion.sampling.schedulers import scheduler_for

    flow = load(pipeline_dirs, "flux")
    with pytest.raises(UsageError, match="does not fit a flow-matching model; choose flow-euler"):
        scheduler_for(flow, "ddim")
    sd = load(pipeline_dirs, "sd-v")
    with pytest.raises(UsageError, match="v_prediction-prediction diffusion model"):
        scheduler_for(sd, "flow-euler")
    assert scheduler_for(sd, "unipc").config.prediction_type == "v_prediction"


@pytest.mark.parametrize("target", ["lora", "embedding", "full"])
def test_finetune_on_a_pipeline_reloads(pipeline_dirs, tmp_path, target):
    from safetensors.torch import load_file

    from shortcut_diffusion.tasks.finetune import FinetuneConfig, load_finetuned, run_finetune
    from shortcut_diffusion.tasks.finetune.evaluation import eval_noise
    from shortcut_diffusion.tasks.generate import sample_images

    config = FinetuneConfig(model=str(pipeline_dirs["sd"]), target=target, prompt=["a red cube", "a blue ball"],
                            reward="ink", steps=3, batch=2, max_steps=2, eval_every=0, eval_per_class=1,
                            checkpoint_every=0, lr=0.05 if target != "full" else 1e-3, height=16, width=16,
                            device="cpu", progress=False, out=str(tmp_path / "ft"))
    summary = run_finetune(config)
    assert summary["steps"] == 2
    after = load_file(tmp_path / "ft" / "eval" / "after.safetensors")
    assert after["labels"].tolist() == [0, 1] and after["images"].shape == (2, 3, 16, 16)
    model = load_finetuned(load(pipeline_dirs, "sd"), tmp_path / "ft" / "final")
    labels = ["a red cube", "a blue ball"]
    images = sample_images(model, eval_noise(model, 2, config.eval_seed), labels, steps=3, seed=config.eval_seed)
    torch.testing.assert_close(images, after["images"], rtol=0, atol=1e-5)
    before = load_file(tmp_path / "ft" / "eval" / "before.safetensors")
    assert not torch.equal(before["images"], after["images"])


def test_memory_options_keep_the_gradient(pipeline_dirs):
    grads = []
    for options in ({}, {"vae_checkpointing": True, "vae_slicing": True, "attention_slicing": True}):
        model = load(pipeline_dirs, "sd", guidance_scale=2.0).memory_options(**options)
        x = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        out = sample(model.denoiser(), model.scheduler, x, steps=STEPS, cond=model.conditioning([PROMPT] * 2),
                     estimator=get_estimator("sdo"))
        (grad,) = torch.autograd.grad(model.decode(out.sample).square().mean(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_low_precision_weights_with_fp32_latents(pipeline_dirs, family):
    model = load(pipeline_dirs, family, dtype="bf16", guidance_scale=2.0)
    assert model.dtype == torch.bfloat16
    x = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = sample(model.denoiser(), model.scheduler, x, steps=STEPS, cond=model.conditioning([PROMPT] * 2),
                 estimator=get_estimator("sdo"), set_timesteps_kwargs=model.timestep_kwargs(STEPS))
    assert out.sample.dtype == torch.float32
    images = model.decode(out.sample)
    assert images.dtype == torch.float32
    (grad,) = torch.autograd.grad(images.square().mean(), x)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_finetune_evaluates_held_out_prompts(pipeline_dirs, tmp_path):
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune

    prompts = tmp_path / "eval_prompts.txt"
    prompts.write_text("a green tree\na yellow car\n")
    config = FinetuneConfig(model=str(pipeline_dirs["sd"]), prompt=["a red cube", "a blue ball"],
                            eval_prompts_file=str(prompts), reward="ink", steps=3, batch=2, max_steps=1,
                            eval_every=0, eval_per_class=1, checkpoint_every=0, lr=0.05, height=16, width=16,
                            device="cpu", progress=False, out=str(tmp_path / "ft"))
    summary = run_finetune(config)
    assert {"reward", "seen_reward"} <= set(summary["after"])
    after = load_file(tmp_path / "ft" / "eval" / "after.safetensors")
    assert after["labels"].tolist() == [0, 1] and after["images"].shape == (2, 3, 16, 16)
    rows = [json.loads(line) for line in (tmp_path / "ft" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("seen_reward" in r for r in rows)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_other_methods_on_pipelines(pipeline_dirs, family, tmp_path, capsys):
    """adjoint and doodl through the model interface of a real pipeline: gradcheck rows and a latent run."""
    import json

    from shortcut_diffusion.cli import main

    model = str(pipeline_dirs[family])
    assert main(["gradcheck", "--json", "--model", model, "--prompt", "a cat", "--steps", "3", "--batch", "1",
                 "--height", "16", "--width", "16", "--estimators", "adjoint", "doodl", "drtune"]) == 0
    rows = {r["estimator"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["adjoint"]["cosine"] > 0.5 and rows["doodl"]["nfe_backward"] == 6 and "drtune" in rows
    out = tmp_path / "run"
    assert main(["latent", "--model", model, "--prompt", "a cat", "--estimator", "adjoint", "--reward", "ink",
                 "--steps", "3", "--iters", "2", "--batch", "1", "--height", "16", "--width", "16",
                 "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["estimator_spec"] == "adjoint"
    assert summary["final_reward"] is not None and len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_guidance_and_drtune_fine_tuning_on_a_pipeline(pipeline_dirs, tmp_path):
    """FreeDoM (``sdo guide``) and DRTune (``sdo finetune --estimator drtune``) through a real pipeline."""
    import json

    from shortcut_diffusion.cli import main

    model = str(pipeline_dirs["sd"])
    small = ["--model", model, "--prompt", "a cat", "--steps", "3", "--batch", "1", "--height", "16", "--width", "16",
             "--reward", "ink", "--no-progress"]
    assert main(["guide", *small, "--scale", "1.0", "--out", str(tmp_path / "guide")]) == 0
    assert json.loads((tmp_path / "guide" / "summary.json").read_text())["final_reward"] is not None
    assert main(["finetune", *small, "--estimator", "drtune", "--max-steps", "2", "--eval-every", "0",
                 "--eval-per-class", "1", "--checkpoint-every", "0", "--out", str(tmp_path / "ft")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["grad_norm"] > 0 for r in rows)
