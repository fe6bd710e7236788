"""The ReNO setting: noise optimization through one- and few-step models (SD-Turbo and
Flux-schnell style pipelines: Euler ancestral on trailing timesteps, or flow matching without a
guidance input; no classifier-free guidance; 1 to 4 steps)."""

from __future__ import annotations

import json

import pytest
import torch

from shortcut_diffusion import load_model
from shortcut_diffusion.cli import main


@pytest.mark.parametrize("family", ["sd-turbo", "flux-schnell"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_noise_optimization_through_a_few_step_model(family, steps, pipeline_dirs, tmp_path):
    out = tmp_path / "run"
    assert main(["latent", "--model", str(pipeline_dirs[family]), "--prompt", "a red cube", "--height", "16",
                 "--width", "16", "--guidance", "0", "--steps", str(steps), "--iters", "4", "--batch", "2",
                 "--reward", "ink", "--prior-weight", "0.01", "--lr", "0.3", "--no-progress", "--device", "cpu",
                 "--grid-every", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["final_reward"] > summary["start_reward"]
    assert all(row["grad_steps"] == 1 and row["grad_norm"] > 0 for row in rows)


def test_few_step_models_run_unguided(pipeline_dirs):
    turbo = load_model(str(pipeline_dirs["sd-turbo"]), height=16, width=16, guidance_scale=0.0)
    schnell = load_model(str(pipeline_dirs["flux-schnell"]), height=16, width=16)
    assert type(turbo.denoiser()).__name__ == "UNet2DConditionDenoiser"  # no CFG batch at guidance 0
    assert schnell.network.config.guidance_embeds is False
    x = torch.randn((1, *schnell.sample_shape))
    with torch.no_grad():  # no guidance input is passed to a network that takes none
        schnell.denoiser()(x, torch.tensor(1000.0), schnell.conditioning(["a cat"]))
    assert turbo.scheduler.config.timestep_spacing == "trailing"
