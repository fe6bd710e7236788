"""The digits testbed: data split, training (a few steps), saving/loading, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from shortcut_diffusion.models.testbed import data, load_digits_model, metrics
from shortcut_diffusion.models.testbed.classifier import augment
from shortcut_diffusion import UsageError
from shortcut_diffusion.tasks.generate import sample_images


def test_split_is_a_stratified_partition():
    everything, train, held = data.load("all"), data.load("train"), data.load("held_out")
    assert len(everything.labels) == 1797 == len(train.labels) + len(held.labels)
    assert everything.images.shape[1:] == (1, 8, 8)
    assert float(everything.images.min()) == -1.0 and float(everything.images.max()) == 1.0
    counts = torch.bincount(held.labels, minlength=10).float() / torch.bincount(everything.labels).float()
    assert torch.allclose(counts, torch.full((10,), 0.2), atol=0.01)
    # disjoint: no held-out image equals a training image at the same index set
    train_set = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(train.images, train.labels)}
    overlap = sum(tuple(x.flatten().tolist()) + (int(y),) in train_set for x, y in zip(held.images, held.labels))
    assert overlap < 5  # only genuine duplicate digits in the data set itself
    with pytest.raises(ValueError, match="unknown split"):
        data.load("test")


def test_augment_shifts_and_keeps_range():
    images = data.load("train").images[:16]
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.allclose(out, images)


def test_training_a_few_steps_saves_a_loadable_model(tiny_testbed_dir):
    d = tiny_testbed_dir
    for name in ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                 "embeddings.safetensors", "classifier.safetensors", "testbed.json"]:
        assert (d / name).is_file(), name
    info = json.loads((d / "testbed.json").read_text())
    assert {"classifier_held_out_accuracy", "metrics", "training", "guidance_scale"} <= set(info)
    unet = UNet2DModel.from_pretrained(d / "unet")  # the ordinary diffusers loader
    assert unet.config.class_embed_type == "identity"
    model = load_digits_model(d)
    assert model.embeddings.weight.shape == (11, 32)
    images = sample_images(model, torch.randn(3, *model.sample_shape), [0, 1, 2], steps=3)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()


def test_missing_testbed_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no digits testbed at"):
        load_digits_model(tmp_path)


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0, 0, 0])
    assert metrics.frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)
    scaled = a * 2  # covariance 4S: tr(S) + tr(4S) - 2 tr(2S) = tr(S); means differ by mean(a)
    expected = np.trace(np.cov(a, rowvar=False)) + (a.mean(0) ** 2).sum()
    assert metrics.frechet_distance(a, scaled) == pytest.approx(expected, rel=1e-3)


def test_the_bundled_judge_is_another_network_that_reads_real_digits():
    from shortcut_diffusion import load_model
    from shortcut_diffusion.models.testbed.judge import DigitJudge

    model = load_model("digits")
    assert isinstance(model.judge, DigitJudge) and not isinstance(model.judge, type(model.classifier))
    held = data.load("held_out")
    with torch.no_grad():
        accuracy = float((model.judge(held.images).argmax(1) == held.labels).float().mean())
    assert accuracy > 0.95 and accuracy == pytest.approx(model.info["judge_held_out_accuracy"], abs=1e-6)
    assert not any(p.requires_grad for p in model.judge.parameters())


def test_the_judge_reports_next_to_the_reward(tiny_testbed_dir, tmp_path):
    import json as _json

    from shortcut_diffusion.tasks.latent.run import LatentConfig, run_latent

    _, out = run_latent(LatentConfig(model=str(tiny_testbed_dir), steps=3, iters=1, batch=2, progress=False,
                                     grid_every=0, out=str(tmp_path / "run")))
    summary = _json.loads((out / "summary.json").read_text())
    assert len(summary["judge_final_predicted"]) == 2 and 0 <= summary["judge_agreement"] <= 1
    # the judge panel, judged against the conditioned class (the default reward digit-match asks for it)
    panel = summary["panel"]
    assert panel["judges"] == ["mlp", "knn", "forest"] and panel["target"] == summary["panel_start"]["target"]
    assert all(len(p) == 2 for p in panel["predicted"].values()) and len(panel["realism_per_sample"]) == 2
    assert 0 <= panel["read_by_all"] <= 2 and 0 <= panel["saturation"] <= 1 and panel["realism"] > 0
