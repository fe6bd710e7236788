"""Direct-Align (SRPO, arXiv 2509.06942) and SRPO's relative reward.

Recovery gives back x0 exactly (float64) when the network predicts the true velocity or noise; the
gradient reaches the weights through the one network call at the drawn step; real training digits
as the clean samples (source=data); the relative reward is positive minus negative condition.
"""

from __future__ import annotations

import json

import pytest
import torch

from shortcut_diffusion import UsageError, generate, get_method, load_model, make_scheduler
from shortcut_diffusion.cli import main
from shortcut_diffusion.gradients import Sampling
from shortcut_diffusion.gradients.surrogate.chain import Chain
from shortcut_diffusion.gradients.surrogate.direct_align import recover, training_digits
from shortcut_diffusion.models.testbed.data import load
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.sampling.schedulers import fresh_scheduler

from conftest import class_cond, latent

STEPS = 6


def scheduler_of(model, name):
    return make_scheduler(name, like=None if name == "flow-euler" else model.scheduler)


@pytest.mark.parametrize("name", ["flow-euler", "ddim"])
def test_recovery_is_exact_when_the_network_predicts_the_truth(tiny64, name):
    x0, eps = latent(seed=1).double(), latent(seed=2).double()
    flow = name == "flow-euler"

    def truth(x, t, cond):
        return eps - x0 if flow else eps

    chain = Chain.on_grid(Sampling(truth, scheduler_of(tiny64, name), STEPS), eps, [], [], rolled=False)
    for i in range(STEPS):
        torch.testing.assert_close(recover(chain, x0, eps, i), x0, rtol=0, atol=1e-12)
    wrong = recover(chain, x0, eps + 0.1, 2)  # with another noise than the one predicted: not x0
    assert (wrong - x0).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["flow-euler", "ddim"])
def test_gradient_reaches_the_weights_at_the_drawn_step_only(tiny64, name):
    scheduler = scheduler_of(tiny64, name)
    calls = []

    def wrap(den):
        def call(x, t, cond):
            calls.append((float(t), torch.is_grad_enabled()))
            return den(x, t, cond)
        return call

    method = get_method("direct-align:first=0.3,last=0.7,seed=4")
    tiny64.unet.requires_grad_(True)
    try:
        out = generate(tiny64, latent().double(), cond=class_cond(tiny64).double(), steps=STEPS, estimator=method,
                       scheduler=scheduler, decode=False, wrap=wrap)
        grads = torch.autograd.grad(out.latents.square().sum(), list(tiny64.unet.parameters()), allow_unused=True)
    finally:
        tiny64.unet.requires_grad_(False)
    (i,) = [k for k, mode in enumerate(out.plan.modes) if mode.value == "grad"]
    assert 0.3 * STEPS <= i + 0.5 and i < 0.7 * STEPS
    timesteps = [float(t) for t in fresh_scheduler(scheduler, STEPS).timesteps]
    with_graph = [t for t, grad in calls if grad]
    assert with_graph == [timesteps[i]] and len(calls) == STEPS + 1
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert out.info["forward"] == STEPS + 1 and out.info["backward"] == 1


def test_source_data_uses_training_digits_of_each_rows_class():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    clean = training_digits([3, 5, 3], x, gen)
    data = load("train")
    for row, label in zip(clean, [3, 5, 3]):
        match = (data.images - row).flatten(1).abs().sum(1) == 0
        assert match.any() and (data.labels[match] == label).all()
    with pytest.raises(UsageError, match="digits testbed"):
        training_digits([1, 2], torch.randn(2, 1, 16, 16), gen)
    with pytest.raises(UsageError, match="class"):
        training_digits(["a cat"], torch.randn(1, 1, 8, 8), gen)


def test_source_data_fine_tunes_digits(tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--model", "digits", "--reward", "relative:digit-match,negative=8", "--cond", "3",
                 "--estimator", "direct-align:source=data", "--steps", "4", "--max-steps", "2", "--batch", "2",
                 "--eval-every", "0", "--eval-per-class", "1", "--checkpoint-every", "0", "--no-progress",
                 "--device", "cpu", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["grad_norm"] > 0 and r["grad_steps"] == 1 for r in rows)


def test_source_data_sample_is_near_the_digit_with_the_trained_model():
    """The trained testbed's one-step recovery of a real digit stays close to it (unlike pure noise)."""
    model = load_model("digits", device="cpu")
    method = get_method("direct-align:source=data,first=0.6,last=0.9")
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():
        out = generate(model, noise, [3, 3, 7, 7], steps=10, estimator=method, decode=False)
    data = load("train")
    nearest = torch.cdist(out.latents.detach().flatten(1), data.images.flatten(1)).min(1).values
    assert (nearest < torch.cdist(noise.flatten(1), data.images.flatten(1)).min(1).values / 2).all()


def test_relative_reward_is_positive_minus_negative_condition():
    model = load_model("digits", device="cpu")
    relative = get_reward("relative:digit-match,negative=8,k=0.5", model=model, shape=model.image_shape)
    plain = get_reward("digit-match", model=model, shape=model.image_shape)
    images, labels = torch.rand(3, 1, 8, 8) * 2 - 1, torch.tensor([1, 2, 3])
    torch.testing.assert_close(relative(images, labels), 1.5 * plain(images, labels) - plain(images, torch.full_like(labels, 8)))

    seen = []

    def prompt_reward(images, prompts):
        seen.append(list(prompts))
        return torch.tensor([float(len(p)) for p in prompts])

    from shortcut_diffusion.rewards.relative import Relative

    value = Relative.from_spec("relative:x,negative=Painting,positive=Real", lambda spec: prompt_reward)(
        images[:1], ["a cat"])
    assert seen == [["Real. a cat"], ["Painting. a cat"]] and float(value) == len("Real. a cat") - len("Painting. a cat")


@pytest.mark.parametrize("spec, words", [("relative:digit-match", "negative"), ("relative:digit-match,negative=8,k=x", "k="),
                                         ("relative:digit-match,negative=8,negative=3", "twice")])
def test_relative_reward_bad_specs(spec, words):
    model = load_model("digits", device="cpu")
    with pytest.raises(UsageError, match=words):
        get_reward(spec, model=model, shape=model.image_shape)


@pytest.mark.parametrize("spec, words", [("direct-align:first=0.6,last=0.2", "first"), ("direct-align:source=web", "source")])
def test_bad_options_are_refused(spec, words):
    with pytest.raises(UsageError, match=words):
        get_method(spec)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_fine_tunes_tiny_flow_pipelines(family, pipeline_dirs, tmp_path):
    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune

    config = FinetuneConfig(model=str(pipeline_dirs[family]), prompt=["a red cube"], height=16, width=16,
                            reward="ink", target="lora", estimator="direct-align:first=0,last=1", steps=3,
                            max_steps=2, batch=2, eval_every=0, eval_per_class=1, checkpoint_every=0, device="cpu",
                            progress=False, out=str(tmp_path / "ft"))
    assert run_finetune(config)["stopped"] == "max_steps"
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 and r["grad_steps"] == 1 for r in rows)
