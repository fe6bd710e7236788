"""``--select own-samples``: per-sample early stopping on the distance to the model's own samples."""

import pytest
import torch

from shortcut_diffusion import load_model
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.latent.optimize import optimize_latent
from shortcut_diffusion.tasks.latent.selection import NearestOwnSample, check_selection, make_selection


def test_each_sample_keeps_its_nearest_iterate_among_those_that_reach_the_reward():
    reference = {"7": torch.zeros(1, 4)}
    select = NearestOwnSample(reference, [7, 7, 7], min_reward=-1.0)
    far, near = torch.full((3, 4), 2.0), torch.full((3, 4), 0.5)
    select.offer(torch.full((3, 1), 0.0), far, torch.tensor([0.0, 0.0, -5.0]))
    select.offer(torch.full((3, 1), 1.0), near, torch.tensor([0.0, -3.0, -5.0]))  # sample 1: near but below
    select.offer(torch.full((3, 1), 2.0), far, torch.tensor([0.0, 0.0, -5.0]))
    chosen = select.chosen(torch.full((3, 1), 9.0))
    # sample 0: the near iterate; sample 1: the first far one that reached the reward; sample 2: never -> last
    assert chosen.flatten().tolist() == [1.0, 0.0, 9.0]
    assert select.iteration == [1, 0, None]


def test_selection_changes_no_iterate_and_returns_one_the_run_visited():
    model = load_model("digits")
    reward = get_reward("digit-class:7", model=model, augment=["translation"], seed=0)
    labels = [1, 1]
    plain = optimize_latent(model, reward, labels, steps=4, iters=3, seed=0, progress=False)
    reward = get_reward("digit-class:7", model=model, augment=["translation"], seed=0)
    select = make_selection("own-samples", model, "digit-class:7", labels, seed=0, min_reward=-1e9)
    visited, samples = [], []
    original = select.offer
    select.offer = lambda latents, images, rewards: (visited.append(latents.clone()), samples.append(images.clone()),
                                                     original(latents, images, rewards))
    kept = optimize_latent(model, reward, labels, steps=4, iters=3, seed=0, progress=False, select=select)
    # the optimization itself is untouched: the same rewards every iteration
    assert [r["reward"] for r in kept.history] == pytest.approx([r["reward"] for r in plain.history])
    assert len(visited) == 4  # the three iterates before each step and the final one
    assert torch.equal(visited[-1], plain.latents)
    for i, latent in enumerate(kept.latents):  # every sample's latent is one of its own iterates
        assert any(torch.equal(latent, v[i].cpu()) for v in visited)
    distances = torch.stack([select.distance(images) for images in samples])
    assert torch.allclose(select.distance(kept.images), distances.min(0).values, atol=1e-5)


def test_bad_selection_is_a_usage_error():
    with pytest.raises(UsageError, match="--select must be one of"):
        check_selection("best")
    with pytest.raises(UsageError, match="class-conditional"):
        check_selection("own-samples", "prompt")


def test_a_moving_digits_reference_moves_as_each_sample_does():
    from shortcut_diffusion.models.testbed.moving.model import MotionLabel

    model = load_model("moving-digits")
    labels = [MotionLabel(1, 0), MotionLabel(1, 1)]  # a 1 moving right, a 1 moving left
    select = make_selection("own-samples", model, "digit-class:7", labels, seed=0)
    assert select.target == ["7:right", "7:left"] and sorted(select.reference) == ["7:left", "7:right"]
    # the model's 7s moving left are nearer to one another than to its 7s moving right
    left, right = select.reference["7:left"], select.reference["7:right"]
    assert torch.cdist(left[:8], left[8:16]).mean() < torch.cdist(left[:8], right[:8]).mean()
