"""random:wan: Wan 2.1 T2V 1.3B's architecture with random weights (toy configuration here)."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import UsageError
from shortcut_diffusion.models.loading import load_model
from shortcut_diffusion.models.shaped_video import WAN21_T2V_1_3B


def test_frame_checkpointed_decode_equals_the_vaes_own_decode_and_its_gradient():
    model = load_model("random:wan:16x32:tiny", num_frames=9)
    assert model.sample_shape == (4, 3, 2, 4) and model.image_shape == (9, 3, 16, 32)
    z = torch.randn(2, *model.sample_shape, requires_grad=True)
    config = model.vae.config
    std, mean = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (config.latents_std, config.latents_mean))
    video = model.decode(z)
    (ours,) = torch.autograd.grad(video.square().sum(), z)
    reference = model.vae.decode(z * std + mean, return_dict=False)[0].permute(0, 2, 1, 3, 4)
    (theirs,) = torch.autograd.grad(reference.square().sum(), z)
    assert video.shape == (2, 9, 3, 16, 32)
    torch.testing.assert_close(video, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_published_configuration_and_the_refusals():
    assert WAN21_T2V_1_3B["num_attention_heads"] * WAN21_T2V_1_3B["attention_head_dim"] == 1536
    assert WAN21_T2V_1_3B["num_layers"] == 30 and WAN21_T2V_1_3B["ffn_dim"] == 8960
    with pytest.raises(UsageError, match="1 \\+ 4 \\* k frames"):
        load_model("random:wan:tiny", num_frames=6)
    with pytest.raises(UsageError, match="multiples of 16"):
        load_model("random:wan:20x32:tiny")
    with pytest.raises(UsageError, match="HEIGHTxWIDTH"):
        load_model("random:wan:480:tiny")
    with pytest.raises(UsageError, match="--frames"):
        load_model("random:sd3:tiny", num_frames=5)
    assert load_model("random:wan:tiny:blocks").network.gradient_checkpointing


def test_a_reward_on_some_frames_decodes_the_causal_prefix_only():
    model = load_model("random:wan:tiny", num_frames=9)
    z = torch.randn(1, *model.sample_shape)
    full = model.images(z)
    first = model.decode_frames(z, [0])
    torch.testing.assert_close(first[:, 0], full[:, 0], rtol=0, atol=1e-6)
    assert first[:, 1:].abs().max() == 0  # not decoded
    torch.testing.assert_close(model.decode_frames(z, [3]), torch.cat([full[:, :5], torch.zeros_like(full[:, 5:])], 1),
                               rtol=0, atol=1e-6)


def test_sdo_latent_runs_on_random_wan_with_a_frame_reward(tmp_path, capsys):
    from shortcut_diffusion.cli import main

    assert main(["latent", "--model", "random:wan:tiny", "--frames", "5", "--reward", "neg-mse", "--reward-frames",
                 "first", "--steps", "2", "--iters", "1", "--batch", "1", "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run").is_dir()
