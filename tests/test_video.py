"""Video pipelines (Wan, CogVideoX, LTX-Video, AnimateDiff, HunyuanVideo; Wan and CogVideoX
image-to-video), tiny and random, through the one model interface: a no-grad sample equals the
pipeline's own ``__call__`` on the same noise, the decode is the pipeline's video as
``B x T x C x H x W``, and the commands run on them."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import UsageError, load_model, sample
from shortcut_diffusion.models.pipelines.image_to_video import IMAGE_SEED
from tiny_pipelines import I2V_FAMILIES, VIDEO_FAMILIES

STEPS = 2
PROMPT = "a cat walking"
FRAMES = 9


@pytest.fixture(autouse=True)
def ftfy_stand_in(monkeypatch):
    """diffusers' Wan I2V cleans prompts with ``ftfy.fix_text`` (not installed here), which leaves
    the ASCII prompts of these tests as they are."""
    import types

    import diffusers.pipelines.wan.pipeline_wan_i2v as module

    monkeypatch.setattr(module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A random RGB image of another size than the videos (the pipeline's processor resizes it)."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "first.png"
    Image.fromarray((np.random.RandomState(0).rand(20, 24, 3) * 255).astype("uint8")).save(path)
    return path


def size(family):
    return 32 if family == "ltx" else 16  # LTX's pipeline takes multiples of 32


def load(dirs, family, image=None, **options):
    image = {"image": image} if family in I2V_FAMILIES else {}
    return load_model(str(dirs[family]), height=size(family), width=size(family), num_frames=FRAMES, **image,
                      **options)


def pipeline_call(model, noise, output_type):
    extra = {"max_sequence_length": model.max_sequence_length} if model.family != "animatediff" else {}
    if hasattr(model, "image"):
        extra["image"] = model.image
    # the generator draws CogVideoX I2V's image latents from the VAE posterior, as the model does
    return model.pipe(prompt=PROMPT, num_inference_steps=STEPS, latents=noise.clone(), height=model.height,
                      width=model.width, num_frames=FRAMES, output_type=output_type,
                      generator=torch.Generator().manual_seed(IMAGE_SEED), guidance_scale=model.guidance_scale,
                      **extra).frames


@pytest.mark.parametrize("family", VIDEO_FAMILIES + I2V_FAMILIES)
def test_video_model_equals_the_pipeline(video_pipeline_dirs, family, image_path):
    model = load(video_pipeline_dirs, family, image=image_path, guidance_scale=3.0)
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


def video_args(dirs, family, image=None):
    image = ["--image", str(image)] if family in I2V_FAMILIES else []
    return ["--model", str(dirs[family]), "--prompt", "a red cube", "--height", str(size(family)), "--width",
            str(size(family)), "--frames", str(FRAMES), "--steps", "2", "--batch", "2", "--no-progress",
            "--device", "cpu", *image]


@pytest.mark.parametrize("family", VIDEO_FAMILIES + I2V_FAMILIES)
def test_sdo_latent_on_a_video_pipeline(video_pipeline_dirs, family, tmp_path, image_path):
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    assert main(["latent", *video_args(video_pipeline_dirs, family, image_path), "--reward", "ink=1,temporal=1",
                 "--reward-frames", "stride:4", "--iters", "2", "--out", str(out)]) == 0
    final = load_file(out / "final.safetensors")
    assert final["images"].shape == (2, FRAMES, 3, size(family), size(family)) and final["images"].abs().max() <= 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["grad_norm"] < float("inf") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_reward"] != summary["start_reward"]
    assert (out / "before_after.png").is_file()
    assert all((out / "videos" / f"{name}_{i:02d}.gif").is_file() for name in ("before", "after") for i in range(2))


@pytest.mark.parametrize("family", VIDEO_FAMILIES + I2V_FAMILIES)
def test_sdo_finetune_lora_on_a_video_pipeline(video_pipeline_dirs, family, tmp_path, image_path):
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.cli import main

    out = tmp_path / "ft"
    assert main(["finetune", *video_args(video_pipeline_dirs, family, image_path), "--target", "lora", "--reward", "ink",
                 "--reward-frames", "last", "--max-steps", "2", "--eval-every", "0", "--eval-per-class", "1",
                 "--checkpoint-every", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["grad_norm"] < float("inf") for r in rows)
    assert (out / "eval" / "before_after.png").is_file() and (out / "eval" / "videos" / "after_00.gif").is_file()
    weights = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    assert weights and all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())


def ramp_video(batch=2, frames=5):
    """Videos whose frame t is the constant t / 10 (so a frame's mean names it)."""
    return (torch.arange(frames).float() / 10).view(1, frames, 1, 1, 1).expand(batch, frames, 3, 4, 4).clone()


def mean_reward(images, prompts=None):
    assert images.dim() == 4, "an image reward receives frames"
    return images.flatten(1).mean(dim=1)


@pytest.mark.parametrize("frames, expected", [("all", 0.2), ("first", 0.0), ("middle", 0.2), ("last", 0.4),
                                              ("stride:2", 0.2), ("stride:3", 0.15)])
def test_reward_frames_choose_what_an_image_reward_scores(frames, expected):
    from shortcut_diffusion.rewards import get_reward

    reward = get_reward(mean_reward, shape=(5, 3, 4, 4), frames=frames)
    torch.testing.assert_close(reward(ramp_video(), ["a", "b"]), torch.full((2,), expected))


def test_random_frames_are_distinct_draws_and_labels_follow_their_frames():
    from shortcut_diffusion.rewards.video import FrameReward

    seen = []

    def record(images, prompts):
        seen.append((images[:, 0, 0, 0] * 10).round().long().tolist())
        assert prompts == ["a", "a", "b", "b"]
        return images.flatten(1).mean(dim=1)

    reward = FrameReward(record, "random:2", seed=3)
    for _ in range(4):
        reward(ramp_video(), ["a", "b"])
    draws = [tuple(s[:2]) for s in seen]
    assert all(a != b for a, b in draws) and len(set(draws)) > 1
    assert all(s[:2] == s[2:] for s in seen), "both videos of a batch score the same frames"


def test_temporal_reward_prefers_still_videos_and_has_a_gradient():
    from shortcut_diffusion.rewards import get_reward

    reward = get_reward("temporal", shape=(5, 3, 4, 4))
    still = torch.zeros(1, 5, 3, 4, 4)
    moving = ramp_video(batch=1).requires_grad_(True)
    value = reward(moving)
    assert float(reward(still)) == 0.0 and float(value.detach()) == pytest.approx(-0.01)
    (grad,) = torch.autograd.grad(value.sum(), moving)
    assert grad.abs().sum() > 0
    with pytest.raises(UsageError, match="scores videos"):
        get_reward("temporal", shape=(3, 4, 4))


def test_user_video_rewards_get_whole_videos_and_are_checked(tmp_path):
    from shortcut_diffusion.rewards import get_reward

    file = tmp_path / "rewards.py"
    file.write_text("def flicker(videos, prompts=None):\n"
                    "    assert videos.dim() == 5\n"
                    "    return -(videos[:, 1:] - videos[:, :-1]).abs().mean(dim=(1, 2, 3, 4))\n"
                    "flicker.video = True\n\n"
                    "def per_frame(videos, prompts=None):\n"
                    "    return videos.mean(dim=(2, 3, 4))\n"
                    "per_frame.video = True\n")
    reward = get_reward(f"{file}:flicker", shape=(5, 3, 4, 4))
    torch.testing.assert_close(reward(ramp_video()), torch.full((2,), -0.1))
    with pytest.raises(UsageError, match=r"returned shape \[2, 5\] for 2 images"):
        get_reward(f"{file}:per_frame", shape=(5, 3, 4, 4))(ramp_video())


def test_video_options_are_refused_where_they_do_not_apply(pipeline_dirs, tmp_path):
    from shortcut_diffusion.cli import main
    from shortcut_diffusion.rewards import get_reward

    with pytest.raises(UsageError, match="--reward-frames last applies to video models"):
        get_reward("ink", shape=(3, 8, 8), frames="last")
    with pytest.raises(UsageError, match="--reward-augment takes images"):
        get_reward("ink", shape=(5, 3, 8, 8), augment=["crop"])
    with pytest.raises(UsageError, match="--frames applies to video pipelines"):
        load_model(str(pipeline_dirs["sd"]), num_frames=9)
    assert main(["latent", "--model", "toy", "--reward-frames", "random:0", "--out", str(tmp_path / "r")]) == 2
    assert main(["latent", "--model", "toy", "--frames", "9", "--out", str(tmp_path / "r")]) == 2


def test_frame_counts_the_vae_cannot_make_are_refused(video_pipeline_dirs):
    with pytest.raises(UsageError, match=r"give 1 \+ 4 \* k frames"):
        load_model(str(video_pipeline_dirs["wan"]), height=16, width=16, num_frames=8)
    with pytest.raises(UsageError, match="odd number of latent frames"):
        load_model(str(video_pipeline_dirs["cogvideox"]), height=16, width=16, num_frames=5)


def test_image_to_video_takes_its_image_and_only_it(video_pipeline_dirs, image_path, tmp_path):
    from shortcut_diffusion.cli import main

    i2v, t2v = str(video_pipeline_dirs["cogvideox-i2v"]), str(video_pipeline_dirs["hunyuanvideo"])
    with pytest.raises(UsageError, match="makes a video from an image: give the conditioning image with --image"):
        load_model(i2v, height=16, width=16, num_frames=FRAMES)
    with pytest.raises(UsageError, match="--image applies to image-to-video pipelines"):
        load_model(t2v, height=16, width=16, num_frames=FRAMES, image=image_path)
    with pytest.raises(UsageError, match="no such file"):
        load_model(i2v, height=16, width=16, num_frames=FRAMES, image=tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UsageError, match="not an image file PIL can read"):
        load_model(i2v, height=16, width=16, num_frames=FRAMES, image=tmp_path / "notes.txt")
    with pytest.raises(UsageError, match="--negative-prompt: HunyuanVideo is guidance-distilled"):
        load_model(t2v, height=16, width=16, num_frames=FRAMES, negative_prompt="blurry")
    assert main(["latent", "--model", "toy", "--image", str(image_path), "--out", str(tmp_path / "r")]) == 2


@pytest.mark.parametrize("family", I2V_FAMILIES)
def test_the_conditioning_image_is_encoded_once_and_never_trained(video_pipeline_dirs, family, image_path):
    model = load(video_pipeline_dirs, family, image=image_path)
    encode, calls = model.pipe.vae.encode, []
    model.pipe.vae.encode = lambda *args, **kwargs: calls.append(1) or encode(*args, **kwargs)
    first = model.image_condition()["condition"]
    model.denoiser(), model.denoiser(guidance=1.0)
    assert len(calls) == 1 and model.image_condition()["condition"] is first and not first.requires_grad
    trained = model.embedding_parameters([PROMPT])
    assert trained and all(p.data_ptr() != first.data_ptr() for p in trained.values())
    # the first latent frame carries the image: another image, another condition
    other = load(video_pipeline_dirs, family, image=image_path.parent / "other.png")
    assert not torch.equal(other.image_condition()["condition"], first)


@pytest.fixture(scope="module", autouse=True)
def other_image(image_path):
    from PIL import Image

    Image.new("RGB", (16, 16), (250, 10, 10)).save(image_path.parent / "other.png")


@pytest.mark.parametrize("family", ["hunyuanvideo", "cogvideox-i2v"])
@pytest.mark.parametrize("command", ["gradcheck", "bench", "finetune-full", "finetune-embedding"])
def test_measurements_and_other_targets_on_a_video_pipeline(video_pipeline_dirs, family, command, image_path,
                                                            tmp_path, capsys):
    """gradcheck, bench and the full and embedding targets of finetune, on a text-to-video and an
    image-to-video pipeline."""
    import csv
    import json

    from safetensors.torch import load_file

    from shortcut_diffusion.cli import main

    args = [*video_args(video_pipeline_dirs, family, image_path), "--reward", "ink"]
    args[args.index("--batch") + 1] = "1"
    args.remove("--no-progress")  # (finetune's option)
    out = tmp_path / "out"
    if command == "gradcheck":
        args[args.index("--steps") + 1] = "3"
        assert main(["gradcheck", "--json", *args, "--estimators", "truncated:k=all", "sdo"]) == 0
        rows = {r["estimator"]: r for r in json.loads(capsys.readouterr().out)["results"]}
        assert rows["truncated:k=all"]["cosine"] == pytest.approx(1.0, abs=1e-3)
        assert rows["full"]["nfe_backward"] == 3 and rows["sdo"]["nfe_backward"] == 1
        assert 0 < rows["sdo"]["saved_bytes"] < rows["full"]["saved_bytes"]
    elif command == "bench":
        steps = args.index("--steps")
        del args[steps:steps + 2]
        assert main(["bench", *args, "--quick", "--estimators", "sdo", "full", "--out", str(out)]) == 0
        rows = {(r["estimator"], r["steps"]): r for r in csv.DictReader((out / "results.csv").open())}
        assert {("sdo", "4"), ("full", "4")} <= set(rows)
        assert int(rows[("sdo", "4")]["saved_bytes"]) < int(rows[("full", "4")]["saved_bytes"])
    else:
        target = command.split("-")[1]
        assert main(["finetune", *args, "--no-progress", "--target", target, "--max-steps", "2", "--eval-every", "0",
                     "--eval-per-class", "1", "--checkpoint-every", "0", "--out", str(out)]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(0 < r["grad_norm"] < float("inf") for r in rows)
        exported = list((out / "final").rglob("*.safetensors"))
        tensors = {k: v for path in exported for k, v in load_file(path).items()}
        assert tensors and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in tensors.values())
        if target == "embedding":  # the prompt's embeddings, never the image
            assert all(k.split(".", 1)[1] in ("encoder_hidden_states", "pooled_projections") for k in tensors)
