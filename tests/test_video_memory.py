"""Memory for video on the tiny pipelines: decoding only the frames a reward reads gives the full
decode's frames, tiled and frame-chunked decodes give its values with less kept, and the pre-run
estimate grows with the frames and refuses a batch that cannot fit with one that does."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import UsageError, load_model
from shortcut_diffusion.meters import SavedTensorMeter, model_weights
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.generate import frames_to_decode

FRAMES = 9


def load(dirs, family, frames=FRAMES, **options):
    """The tiny pipeline of ``family``; ``ltx-causal``: LTX with a causal decoder (``decoder_causal``)."""
    size = 32 if family.startswith("ltx") else 16
    if family.endswith("-i2v"):
        from PIL import Image

        options["image"] = Image.new("RGB", (size, size), (200, 40, 90))
    model = load_model(str(dirs[family.removesuffix("-causal")]), height=size, width=size, num_frames=frames, **options)
    if family == "ltx-causal":
        torch.manual_seed(0)
        vae = model.pipe.vae
        model.pipe.vae = type(vae).from_config({**vae.config, "decoder_causal": True}).eval().requires_grad_(False)
    return model


def latents(model, batch=2):
    return torch.randn((batch, *model.sample_shape), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family, count, frames, decoded", [
    ("animatediff", FRAMES, [3, 7], [3, 7]),  # an image VAE: those frames alone
    ("wan", FRAMES, [0], [0]),  # a causal VAE: the first latent frame is the first frame
    ("wan", FRAMES, [2], [0, 1, 2, 3, 4]),  # ... and a prefix of latent frames the first frames
    # CogVideoX decodes latent frames in batches of 2, the odd one in the first: prefixes of 3, 5, ... latent frames
    ("cogvideox", 17, [3], list(range(9))),
    ("cogvideox", 17, [0], list(range(9))),  # the first latent frame alone decodes differently: the first 3
    ("cogvideox", 17, [9], list(range(17))),  # 4 latent frames would split a batch: all 5
    ("cogvideox", FRAMES, [0], list(range(FRAMES))),
    ("cogvideox", 49, [0], list(range(9))),  # its default length: the first frame's decode makes 9 of 49 (docs)
    ("cogvideox-i2v", 17, [5], list(range(9))),  # decodes as its text-to-video family
    ("ltx", FRAMES, [0], list(range(FRAMES))),  # a non-causal decoder (LTX-Video's): all
    ("ltx-causal", FRAMES, [2], [0, 1, 2, 3, 4]),  # a causal one: a prefix of the packed tokens' frames
    ("hunyuanvideo", FRAMES, [0], list(range(FRAMES))),  # group norms over every frame: all
])
def test_selective_decode_equals_the_full_decode(video_pipeline_dirs, family, count, frames, decoded):
    model = load(video_pipeline_dirs, family, frames=count)
    z = latents(model)
    assert model.frames_decoded(frames) == decoded
    with torch.no_grad():
        full, part = model.images(z), model.decode_frames(z, frames)
    assert part.shape == full.shape
    torch.testing.assert_close(part[:, decoded], full[:, decoded], rtol=1e-5, atol=1e-5)
    rest = [t for t in range(count) if t not in decoded]
    assert not rest or ((part[:, rest] == 0).all() and (full[:, rest] != 0).any())


def decode_kept_bytes(model, z, frames=None):
    x = z.clone().requires_grad_(True)
    with SavedTensorMeter(exclude=model_weights(model)) as meter:
        video = model.images(x) if frames is None else model.decode_frames(x, frames)
    return video, meter.bytes, x


@pytest.mark.parametrize("family, count, frame, kept", [
    ("animatediff", FRAMES, 4, 1 / 4),  # one frame of 9
    ("wan", FRAMES, 0, 1 / 4),  # one latent frame of 3
    ("cogvideox", 17, 3, 3 / 5),  # 3 latent frames of 5
    ("ltx-causal", FRAMES, 0, 1 / 3),  # one latent frame of 3
])
def test_selective_decode_keeps_less_and_its_gradient_is_the_full_decodes(video_pipeline_dirs, family, count, frame,
                                                                          kept):
    model = load(video_pipeline_dirs, family, frames=count)
    z = latents(model)
    full, full_bytes, x_full = decode_kept_bytes(model, z)
    part, part_bytes, x_part = decode_kept_bytes(model, z, [frame])
    assert part_bytes < full_bytes * kept
    full[:, frame].square().sum().backward()
    part[:, frame].square().sum().backward()
    torch.testing.assert_close(x_part.grad, x_full.grad, rtol=1e-4, atol=1e-6)


def test_the_reward_reads_the_frames_that_were_drawn_and_decoded(video_pipeline_dirs):
    model = load(video_pipeline_dirs, "animatediff")
    seen = []

    def record(images, prompts=None):
        seen.append(images.detach().abs().flatten(1).sum(1))
        return images.flatten(1).mean(1)

    reward = get_reward(record, shape=model.image_shape, frames="random:2", seed=5)
    for _ in range(3):
        frames = frames_to_decode(model, reward)
        assert len(frames) == 2
        with torch.no_grad():
            reward(model.decode_frames(latents(model), frames), ["a", "b"])
        assert (seen[-1] > 0).all(), "every frame the reward scored was decoded"
    assert frames_to_decode(model, get_reward("ink=1,temporal=1", shape=model.image_shape, frames="last")) is None


def test_chunked_decode_matches_and_keeps_less(video_pipeline_dirs):
    model = load(video_pipeline_dirs, "animatediff")
    z = latents(model)
    full, full_bytes, x_full = decode_kept_bytes(model, z)
    model.memory_options(decode_chunk=3)
    chunked, chunk_bytes, x_chunk = decode_kept_bytes(model, z)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert chunk_bytes < full_bytes / 4
    full.square().sum().backward()
    chunked.square().sum().backward()
    torch.testing.assert_close(x_chunk.grad, x_full.grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(UsageError, match="--decode-chunk: wan's VAE decodes the frames together"):
        load(video_pipeline_dirs, "wan").memory_options(decode_chunk=3)


def test_vae_tiling_matches_within_tolerance_and_changes_what_is_kept(video_pipeline_dirs):
    model = load_model(str(video_pipeline_dirs["animatediff"]), height=64, width=64, num_frames=3)
    z = latents(model, batch=1)
    full, full_bytes, _ = decode_kept_bytes(model, z)
    model.memory_options(vae_tiling=True)
    vae = model.pipe.vae
    assert vae.use_tiling
    vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 32
    same, _, _ = decode_kept_bytes(model, z)  # tiles as large as the video: one tile, the same decode
    torch.testing.assert_close(same, full)
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = 32, 16, 0.25  # 3 x 3 tiles
    tiled, tiled_bytes, _ = decode_kept_bytes(model, z)
    assert tiled_bytes != full_bytes
    # the seams differ (this random VAE's mid-block attention sees the whole image), the rest agrees
    assert (tiled - full).abs().mean() < 0.15 * full.abs().mean()


def test_vae_tiling_and_chunks_are_refused_where_they_do_not_apply(pipeline_dirs, tmp_path):
    from shortcut_diffusion.cli import main

    with pytest.raises(UsageError, match="--vae-tiling: digits models decode without a VAE"):
        load_model("digits").memory_options(vae_tiling=True)
    with pytest.raises(UsageError, match="--decode-chunk applies to video pipelines"):
        load_model(str(pipeline_dirs["sd"])).memory_options(decode_chunk=2)
    assert main(["latent", "--model", "toy", "--decode-chunk", "-1", "--out", str(tmp_path / "r")]) == 2


def test_the_estimate_grows_with_frames_and_names_a_batch_that_fits(video_pipeline_dirs, monkeypatch):
    from shortcut_diffusion.gradients import get_method
    from shortcut_diffusion.tasks import memory

    sizes = {}
    for frames in (5, 9, 17):
        model = load(video_pipeline_dirs, "wan", frames=frames)
        sizes[frames] = memory.sample_graph_bytes(model, "a cat")
    assert sizes[5][0] < sizes[9][0] < sizes[17][0] and sizes[5][1] < sizes[9][1] < sizes[17][1]
    model = load(video_pipeline_dirs, "animatediff")
    full = sum(memory.sample_graph_bytes(model, "a cat"))
    first = sum(memory.sample_graph_bytes(model, "a cat", frames=[0]))
    assert first < full
    method = get_method("full")
    per_sample = sizes[9][0] * method.held_graphs(4) + sizes[9][1]
    model = load(video_pipeline_dirs, "wan")
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(per_sample * 3.5 / memory.HEADROOM))
    memory.check_batch_fits(model, method, steps=4, batch=3, labels=["a cat"])
    with pytest.raises(UsageError, match=r"--batch 8 needs about .* use --batch 3 or fewer"):
        memory.check_batch_fits(model, method, steps=4, batch=8, labels=["a cat"])
