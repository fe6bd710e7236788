"""Video pipelines (Wan, CogVideoX, LTX-Video, AnimateDiff), tiny and random, through the one model
interface: a no-grad sample equals the pipeline's own ``__call__`` on the same noise, the decode
is the pipeline's video as ``B x T x C x H x W``, and the commands run on them."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import UsageError, load_model, sample
from tiny_pipelines import VIDEO_FAMILIES

STEPS = 2
PROMPT = "a cat walking"
FRAMES = 9


def size(family):
    return 32 if family == "ltx" else 16  # LTX's pipeline takes multiples of 32


def load(dirs, family, **options):
    return load_model(str(dirs[family]), height=size(family), width=size(family), num_frames=FRAMES, **options)


def pipeline_call(model, noise, output_type):
    extra = {"max_sequence_length": model.max_sequence_length} if model.family != "animatediff" else {}
    return model.pipe(prompt=PROMPT, num_inference_steps=STEPS, latents=noise.clone(), height=model.height,
                      width=model.width,
                      num_frames=FRAMES, output_type=output_type, generator=torch.Generator().manual_seed(1),
                      guidance_scale=model.guidance_scale, **extra).frames


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_model_equals_the_pipeline(video_pipeline_dirs, family):
    model = load(video_pipeline_dirs, family, guidance_scale=3.0)
    noise = torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    expected = pipeline_call(model, noise, "latent")
    with torch.no_grad():
        ours = sample(model.denoiser(), model.scheduler, noise, steps=STEPS, cond=model.conditioning([PROMPT]),
                      set_timesteps_kwargs=model.timestep_kwargs(STEPS)).sample
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    video = pipeline_call(model, noise, "pt")
    with torch.no_grad():
        decoded = model.decode(ours)
    assert decoded.shape == (1, *model.image_shape) == (1, FRAMES, 3, size(family), size(family))
    torch.testing.assert_close(((decoded + 1) / 2).clamp(0, 1), video, rtol=1e-4, atol=1e-5)


def video_args(dirs, family):
    return ["--model", str(dirs[family]), "--prompt", "a red cube", "--height", str(size(family)), "--width",
            str(size(family)), "--frames", str(FRAMES), "--steps", "2", "--batch", "2", "--no-progress",
            "--device", "cpu"]


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_sdo_latent_on_a_video_pipeline(video_pipeline_dirs, family, tmp_path):
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    assert main(["latent", *video_args(video_pipeline_dirs, family), "--reward", "ink=1,temporal=1",
                 "--reward-frames", "stride:4", "--iters", "2", "--out", str(out)]) == 0
    final = load_file(out / "final.safetensors")
    assert final["images"].shape == (2, FRAMES, 3, size(family), size(family)) and final["images"].abs().max() <= 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["grad_norm"] < float("inf") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_reward"] != summary["start_reward"]
    assert (out / "before_after.png").is_file()


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_sdo_finetune_lora_on_a_video_pipeline(video_pipeline_dirs, family, tmp_path):
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.cli import main

    out = tmp_path / "ft"
    assert main(["finetune", *video_args(video_pipeline_dirs, family), "--target", "lora", "--reward", "ink",
                 "--reward-frames", "last", "--max-steps", "2", "--eval-every", "0", "--eval-per-class", "1",
                 "--checkpoint-every", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["grad_norm"] < float("inf") for r in rows)
    weights = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    assert weights and all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
