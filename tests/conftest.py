"""Tiny models shared by the tests (built in code, seeded, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

from shortcut_diffusion import make_scheduler
from shortcut_diffusion.models import toy_model

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker, and per command a test starts
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Every scheduler the engine promises, with the step arguments that select its variant.
SCHEDULER_CASES = {
    "ddim": ("ddim", {}),
    "ddim-eta": ("ddim", {"eta": 0.7}),
    "ddpm": ("ddpm", {}),
    "euler": ("euler", {}),
    "euler-a": ("euler-a", {}),
    "dpmpp-2m": ("dpmpp-2m", {}),
    "dpmpp-2m-sde": ("dpmpp-2m-sde", {}),
    "unipc": ("unipc", {}),
    "flow-euler": ("flow-euler", {}),
}

ESTIMATOR_SPECS = [
    "full",
    "checkpointed",
    "truncated:k=1",
    "truncated:k=2",
    "alignprop",
    "alignprop:checkpoint=0",
    "alignprop:draw=call",
    "refl",
    "sdo",
    "sdo:keep=last",
    "sdo:keep=random",
    "sdo:keep=2",
    "sdo:k=2,keep=random",
    "drtune",
    "drtune:k=2",
]


@pytest.fixture(scope="session")
def tiny():
    model = toy_model(seed=0, channels=(8, 16))
    model.unet.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tiny64(tiny):
    """The tiny model in float64, for comparisons that must hold to float precision."""
    import copy

    model = copy.deepcopy(tiny)
    model.unet.double()
    model.embeddings.double()
    return model


@pytest.fixture(params=list(SCHEDULER_CASES), ids=list(SCHEDULER_CASES))
def scheduler_case(request, tiny):
    name, step_kwargs = SCHEDULER_CASES[request.param]
    return make_scheduler(name, like=tiny.scheduler), step_kwargs


def latent(batch: int = 2, seed: int = 0, shape=(1, 16, 16)) -> torch.Tensor:
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def class_cond(model, batch: int = 2) -> torch.Tensor:
    return model.embeddings(torch.arange(batch) % 10).detach()


@pytest.fixture(scope="session")
def tiny_testbed_dir(tmp_path_factory):
    """A digits testbed trained for a few steps (the training code path, end to end)."""
    from shortcut_diffusion.tasks.testbed import TrainTestbedConfig, train_testbed

    out = tmp_path_factory.mktemp("testbed")
    config = TrainTestbedConfig(out=str(out), steps=15, batch=32, channels=[8, 16], warmup=5,
                                classifier_epochs=1, judge_epochs=2, eval_per_class=3)
    train_testbed(config, progress=False, log=None)
    return out


@pytest.fixture(scope="session")
def pipeline_dirs(tmp_path_factory):
    """Tiny random pipelines of every supported family, saved with save_pretrained."""
    import tiny_pipelines

    root = tmp_path_factory.mktemp("pipelines")
    return {family: tiny_pipelines.build(family, root / family) for family in tiny_pipelines.FAMILIES}


@pytest.fixture(scope="session")
def video_pipeline_dirs(tmp_path_factory):
    """Tiny random text-to-video and image-to-video pipelines of every supported family, saved with
    save_pretrained."""
    import tiny_pipelines

    root = tmp_path_factory.mktemp("video-pipelines")
    families = tiny_pipelines.VIDEO_FAMILIES + tiny_pipelines.I2V_FAMILIES
    return {family: tiny_pipelines.build_video(family, root / family) for family in families}
