"""Rewards: one signature, differentiable, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shortcut_diffusion import UsageError
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.models.testbed import data, load_digits_model


@pytest.fixture(scope="module")
def model(tiny_testbed_dir):
    return load_digits_model(tiny_testbed_dir)


@pytest.mark.parametrize("spec", ["ink", "neg-mse:3", "digit-class:7", "digit-match", "adversarial:3",
                                  "adversarial:3,weight=2", "style:0"])
def test_shape_and_finite_gradients(spec, model):
    reward = get_reward(spec, model=model, shape=(1, 8, 8))
    images = data.load("held_out").images[:4].clone().requires_grad_()
    labels = torch.tensor([0, 1, 2, 3])
    r = reward(images, labels)
    assert r.shape == (4,) and torch.isfinite(r).all()
    (grad,) = torch.autograd.grad(r.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_values_are_what_they_say(model):
    images = data.load("held_out").images[:5]
    labels = data.load("held_out").labels[:5]
    log_p = F.log_softmax(model.classifier(images), dim=1)
    torch.testing.assert_close(get_reward("digit-class:7", model=model)(images), log_p[:, 7])
    torch.testing.assert_close(get_reward("digit-match", model=model)(images, labels),
                               log_p[torch.arange(5), labels])
    adv = get_reward("adversarial:7,weight=0", model=model)
    torch.testing.assert_close(adv(images, labels), log_p[:, 7])
    # a training digit is at distance 0 from its nearest real digit of its own class
    train = data.load("train")
    assert float(get_reward("adversarial:7", model=model).distance(train.images[:3], train.labels[:3]).max()) == 0.0
    # style: the reference itself has the best possible reward, 0
    ref = data.load("all").images[5:6]
    assert float(get_reward("style:5", model=model)(ref)) == pytest.approx(0.0, abs=1e-9)
    assert torch.testing.assert_close(get_reward("ink")(torch.zeros(2, 1, 8, 8)), torch.zeros(2)) is None


def test_style_reference_from_a_file(model, tmp_path):
    path = tmp_path / "ref.png"
    Image.fromarray((torch.rand(16, 16) * 255).byte().numpy()).save(path)
    r = get_reward(f"style:{path}", model=model)(data.load("all").images[:2])
    assert r.shape == (2,) and (r < 0).all()


@pytest.mark.parametrize("spec,message", [
    ("beauty", "unknown reward 'beauty'"),
    ("digit-class:12", "class 12 is out of range 0..9"),
    ("digit-class:seven", "needs a class index"),
    ("digit-class", "needs a class index"),
    ("style:/no/such/file.png", "cannot read image"),
    ("style", "needs a reference"),
    ("style:99999", "index 99999 is out of range 0..1796"),
    ("adversarial:3,strength=2", "unknown option"),
    ("ink:3", "takes no argument"),
])
def test_bad_specs(spec, message, model):
    with pytest.raises(UsageError, match=message):
        get_reward(spec, model=model, shape=(1, 8, 8))


def test_testbed_rewards_need_the_classifier():
    with pytest.raises(UsageError, match="needs the digits testbed's classifier"):
        get_reward("digit-class:3")


def test_digit_match_needs_labels(model):
    with pytest.raises(UsageError, match="needs the conditioned class"):
        get_reward("digit-match", model=model)(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("spec", ["ink", "neg-mse:3", "digit-class:7", "digit-match", "adversarial:3", "style:0"])
def test_every_reward_checks_its_images(spec, model):
    """As docs/rewards.md says: values beyond [-1, 1] (past a 0.01 rounding allowance) and
    shapes the reward cannot score are one-line errors, for the digits rewards too."""
    reward = get_reward(spec, model=model, shape=(1, 8, 8))
    images, labels = data.load("held_out").images[:2], torch.tensor([0, 1])
    reward(images.clamp(-1, 1) * 1.01, labels)  # within the allowance
    with pytest.raises(UsageError, match=r"takes images in \[-1, 1\]; got values up to 3.00"):
        reward(images * 3, labels)
    if spec in ("ink", "neg-mse:3"):  # weight-free: any batch of samples (latents, token sequences)
        with pytest.raises(UsageError, match="takes a batch of samples"):
            reward(images[0, 0, 0], labels)
    else:
        with pytest.raises(UsageError, match="NCHW images with 1 or 3 channels"):
            reward(images[:, 0], labels)
    if spec not in ("ink", "neg-mse:3"):
        with pytest.raises(UsageError, match=r"scores the digits testbed's 1x8x8 images, got shape \(2, 3, 8, 8\)"):
            reward(images.expand(-1, 3, -1, -1), labels)
