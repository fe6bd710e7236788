"""Latent optimization: the API, the run directory, warm-up, inversion, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shortcut_diffusion import UsageError, make_scheduler, sample
from shortcut_diffusion.cli import main
from shortcut_diffusion.sampling.inversion import ddim_invert
from shortcut_diffusion.tasks.latent.run import LatentConfig, run_latent
from shortcut_diffusion.tasks.latent.optimize import chi_prior, optimize_latent
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.models.testbed import load_digits_model


@pytest.fixture(scope="module")
def model(tiny_testbed_dir):
    return load_digits_model(tiny_testbed_dir)


def small(tiny_testbed_dir, tmp_path, **overrides):
    values = dict(model=str(tiny_testbed_dir), steps=6, iters=3, batch=3, out=str(tmp_path / "run"),
                  progress=False, grid_every=2)
    values.update(overrides)
    return LatentConfig(**values)


def test_run_directory(tiny_testbed_dir, tmp_path):
    result, out = run_latent(small(tiny_testbed_dir, tmp_path))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "reward_curve.png", "before_after.png", "final.safetensors",
            "grid_0000.png", "grid_0002.png", "summary.json"} <= names
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 1, 2]
    assert all({"iter", "reward", "loss", "seconds", "saved_bytes"} <= set(r) for r in rows)
    assert all(r["saved_bytes"] > 0 for r in rows)
    final = load_file(out / "final.safetensors")
    assert final["latents"].shape == final["images"].shape == (3, 1, 8, 8)
    assert final["images"].min() >= -1 and final["images"].max() <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["estimator_spec"] == "sdo" and config["steps"] == 6


def test_same_config_same_result(tiny_testbed_dir, tmp_path):
    a, _ = run_latent(small(tiny_testbed_dir, tmp_path / "a"))
    b, _ = run_latent(small(tiny_testbed_dir, tmp_path / "b"))
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)


def test_reward_increases_and_samples_follow_the_latents(model):
    reward = get_reward("ink")
    labels = torch.tensor([1, 1])
    result = optimize_latent(model, reward, labels, steps=5, iters=6, lr=0.2, progress=False)
    assert result.rewards.mean() > result.start_rewards.mean()
    rewards = [row["reward"] for row in result.history]
    assert rewards[-1] > rewards[0]
    with torch.no_grad():  # the returned images are plain samples of the returned latents
        again = sample(model.denoiser(), make_scheduler("ddim", like=model.scheduler), result.latents, steps=5,
                       cond=model.conditioning(labels), generator=1).sample.clamp(-1, 1)
    torch.testing.assert_close(result.images, again)


def test_warmup_optimizes_the_intermediate_latent(model):
    labels = torch.tensor([2, 3])
    result = optimize_latent(model, get_reward("ink"), labels, steps=8, warmup=5, iters=2, progress=False)
    assert all(row["grad_steps"] == 1 for row in result.history)
    with torch.no_grad():  # the latent lives at step 5: sampling the last 3 steps reproduces the images
        again = sample(model.denoiser(), make_scheduler("ddim", like=model.scheduler), result.latents, steps=8,
                       start=5, cond=model.conditioning(labels), generator=1).sample.clamp(-1, 1)
    torch.testing.assert_close(result.images, again)


def test_non_finite_reward_stops_and_keeps_the_last_good_latents(model):
    calls = {"n": 0}

    def flaky(images, labels):
        calls["n"] += 1
        r = images.flatten(1).mean(1)
        return r * float("nan") if calls["n"] == 4 else r  # 1st call scores the start; 4th = iter 2

    result = optimize_latent(model, flaky, torch.tensor([0, 1]), steps=4, iters=5, progress=False)
    assert result.stopped and "iteration 2" in result.stopped
    assert len(result.history) == 2 and torch.isfinite(result.latents).all()


def test_inversion_is_exact_when_eps_ignores_x():
    """With eps(x, t) = c(t), DDIM inversion followed by DDIM sampling gives back the image."""
    table = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3

    def denoiser(x, t, cond):
        return table[int(t)].expand_as(x)

    scheduler = make_scheduler("ddim", beta_schedule="squaredcos_cap_v2", clip_sample=False)
    image = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    for start in (0, 7):
        z = ddim_invert(denoiser, scheduler, image, steps=10, start=start)
        with torch.no_grad():
            back = sample(denoiser, scheduler, z, steps=10, start=start).sample
        torch.testing.assert_close(back, image, rtol=1e-5, atol=1e-5)


def test_chi_prior_is_smallest_on_the_gaussian_shell():
    d = 64
    radii = torch.linspace(4, 12, 81)
    z = torch.ones(81, d) / d**0.5 * radii[:, None]
    best = radii[chi_prior(z).argmin()]
    assert abs(float(best) - (d - 1) ** 0.5) < 0.11


@pytest.mark.parametrize("overrides,message", [
    ({"lr": 0.0}, "learning rate must be > 0"),
    ({"lr": -1.0}, "learning rate must be > 0"),
    ({"warmup": 6}, "warmup=6, steps=6"),
    ({"cond": [12]}, "class 12 is out of range 0..9"),
    ({"init": "invert:99999"}, "index 99999 is out of range"),
    ({"init": "photo"}, "--init must be noise or invert:REF"),
    ({"prior_weight": 1.0, "warmup": 2}, "Gaussian prior applies to the initial noise"),
    ({"estimator": "sdo:keep=sideways"}, "keep='sideways'"),
    ({"reward": "digit-class:11"}, "class 11 is out of range"),
])
def test_bad_input_fails_before_work(overrides, message, tiny_testbed_dir, tmp_path):
    config = small(tiny_testbed_dir, tmp_path, **overrides)
    with pytest.raises(UsageError, match=message):
        run_latent(config)
    assert not (tmp_path / "run").exists()


def test_wrong_image_size_and_unreadable_image(tiny_testbed_dir, tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (16, 16)).save(path)
    with pytest.raises(UsageError, match="is 16x16 .* needs 8x8"):
        run_latent(small(tiny_testbed_dir, tmp_path, init=f"invert:{path}"))
    with pytest.raises(UsageError, match="cannot read image"):
        run_latent(small(tiny_testbed_dir, tmp_path, init=f"invert:{tmp_path / 'missing.png'}"))


def test_cli_latent_with_inversion(tiny_testbed_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["latent", "--model", str(tiny_testbed_dir), "--steps", "5", "--warmup", "2", "--iters", "2",
                 "--init", "invert:10", "--batch", "2", "--proximity-weight", "1", "--no-progress",
                 "--out", str(out), "--reward", "style:3", "--estimator", "full"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "run directory" in printed and (out / "final.safetensors").is_file()


def test_bf16_autocast_keeps_the_latent_in_fp32(model):
    result = optimize_latent(model, get_reward("ink"), torch.tensor([4, 5]), steps=4, iters=2,
                             precision="bf16", progress=False)
    assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        optimize_latent(model, get_reward("ink"), torch.tensor([4]), steps=2, iters=1, precision="fp8",
                        progress=False)


def test_the_paper_preset_fills_the_defaults_and_yields_to_explicit_options():
    from shortcut_diffusion.tasks.latent.run import PRESETS, LatentConfig

    paper = LatentConfig(preset="paper").resolved()
    assert {k: getattr(paper, k) for k in PRESETS["paper"]} == PRESETS["paper"]
    mine = LatentConfig(preset="paper", lr=0.05, warmup=40).resolved()
    assert (mine.lr, mine.warmup, mine.betas, mine.prior_weight) == (0.05, 40, [0.9, 0.9], 0.0)
    assert LatentConfig().resolved() == LatentConfig()


@pytest.mark.parametrize("argv, expected", [
    # the moving demo's step (0.05) and steps (20) yield to the same values as sdo latent's defaults, given
    (["demo", "--model", "moving-digits", "--lr", "0.15", "--steps", "50"], {"lr": 0.15, "steps": 50, "cond": ["1:right", "1:left", "1:down", "1:up"]}),
    (["demo", "--model", "moving-digits"], {"lr": 0.05, "steps": 20}),
    # a preset's lr 0.01 yields to --lr 0.15; its other values, and over the moving demo's, apply
    (["latent", "--preset", "paper", "--lr", "0.15"], {"lr": 0.15, "steps": 50, "warmup": 45}),
    (["demo", "--model", "moving-digits", "--preset", "paper"], {"lr": 0.01, "steps": 50, "out": "runs/demo-moving"}),
])
def test_options_given_on_the_command_line_win_even_at_their_defaults(monkeypatch, argv, expected):
    import shortcut_diffusion.tasks.latent.run as latent_run

    seen = {}

    class Captured(Exception):
        pass

    def capture(config, given=None):
        seen["config"] = config.resolved(given)
        raise Captured  # stop before any work

    monkeypatch.setattr(latent_run, "run_latent", capture)
    with pytest.raises(Captured):
        main(argv)
    assert {k: getattr(seen["config"], k) for k in expected} == expected


def test_an_inversion_optimizes_one_latent_unless_told_otherwise():
    from shortcut_diffusion.tasks.latent.run import LatentConfig

    assert LatentConfig(init="invert:3").batch_size == 1
    assert LatentConfig(init="invert:3", batch=4).batch_size == 4
    assert LatentConfig().batch_size == 8
