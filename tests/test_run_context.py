"""The run context: the same options give every command the same labels, reward and scheduler."""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.measure.bench.config import BenchConfig
from shortcut_diffusion.measure.gradcheck.config import GradcheckConfig
from shortcut_diffusion.sampling.schedulers import fresh_scheduler
from shortcut_diffusion.tasks.context import build_context
from shortcut_diffusion.tasks.finetune.config import FinetuneConfig
from shortcut_diffusion.tasks.guide.config import GuideConfig
from shortcut_diffusion.tasks.latent.config import LatentConfig

SHARED = dict(model="digits", device="cpu", dtype="bf16", cond=["3", "5"], reward="digit-class:7",
              reward_augment=["translation", "cutout"], reward_views=3, seed=11)
SAMPLING = dict(scheduler="ddim", steps=6)
BATCH = 5


def _contexts():
    """The run context of equivalent configs of every command."""
    configs = {
        "latent": LatentConfig(**SHARED, **SAMPLING, batch=BATCH),
        "guide": GuideConfig(**SHARED, **SAMPLING, batch=BATCH),
        "gradcheck": GradcheckConfig(**SHARED, **SAMPLING, batch=BATCH),
        "finetune": FinetuneConfig(**SHARED, **SAMPLING, batch=BATCH),
    }
    contexts = {name: build_context(config, batch=BATCH, progress=False) for name, config in configs.items()}
    bench = BenchConfig(**SHARED, batch=BATCH)  # bench samples with the model's own scheduler at each N
    contexts["bench"] = build_context(bench, batch=BATCH, steps=SAMPLING["steps"], scheduler="ddim", progress=False)
    return contexts


def _timesteps(context) -> list[int]:
    scheduler = fresh_scheduler(context.scheduler, SAMPLING["steps"])
    return scheduler.timesteps.tolist()


def test_equivalent_configs_of_every_command_get_the_same_context():
    contexts = _contexts()
    reference = contexts["latent"]
    images = torch.rand((BATCH, *reference.model.image_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert reference.labels == [3, 5, 3, 5, 3] and reference.conditions == [3, 5]
    # the augmented reward draws its views from the run's seed: its first call gives the same values everywhere
    rewards = {name: context.reward(images, torch.tensor(context.labels)) for name, context in contexts.items()}
    for name, context in contexts.items():
        assert context.labels == reference.labels, name
        assert context.conditions == reference.conditions, name
        assert context.reward_spec == "digit-class:7", name
        assert context.precision.name == "bf16" and context.device == torch.device("cpu"), name
        assert type(context.scheduler).__name__ == "DDIMScheduler", name
        assert dict(context.scheduler.config) == dict(reference.scheduler.config), name
        assert _timesteps(context) == _timesteps(reference), name
        torch.testing.assert_close(rewards[name], rewards["latent"], rtol=0, atol=0, msg=name)
    again = reference.reward(images, torch.tensor(reference.labels))
    assert not torch.equal(again, rewards["latent"]), "a second call draws other views: the test can tell seeds apart"


def test_the_context_follows_the_options():
    base = LatentConfig(**SHARED, **SAMPLING, batch=BATCH)
    other = build_context(LatentConfig(**{**SHARED, "cond": ["4"], "seed": 12}, scheduler="euler", steps=6,
                                       batch=3), batch=3, progress=False)
    assert other.labels == [4, 4, 4]
    assert type(other.scheduler).__name__ == "EulerDiscreteScheduler"
    no_batch = build_context(base, batch=None, progress=False)
    assert no_batch.labels == no_batch.conditions == [3, 5]
    auto = build_context(GradcheckConfig(model="digits", device="cpu", steps=4), batch=2, progress=False)
    assert auto.reward_spec == "digit-match"  # auto: the testbed's classifier reward


def test_conditions_the_model_does_not_take_are_refused():
    with pytest.raises(UsageError, match="class 12 is out of range"):
        build_context(GuideConfig(model="digits", device="cpu", cond=["12"]), batch=2, progress=False)
