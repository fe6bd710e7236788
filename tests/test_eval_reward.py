"""Held-out rewards (--eval-reward): scored on the same samples as the training reward, reported
per iteration / evaluation and in the summary, and never optimized."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from shortcut_diffusion.cli import main
from shortcut_diffusion.models.testbed import load_digits_model
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune
from shortcut_diffusion.tasks.guide.config import GuideConfig
from shortcut_diffusion.tasks.guide.run import run_guide
from shortcut_diffusion.tasks.latent.run import LatentConfig, run_latent

HELD_OUT = ["ink", "digit-match"]
NAMES = [f"eval_reward/{spec}" for spec in HELD_OUT]


def latent_config(tmp_path, name, **overrides):
    values = dict(model="digits", reward="digit-class:7", steps=4, iters=3, batch=2, grid_every=0, device="cpu",
                  out=str(tmp_path / name), progress=False)
    return LatentConfig(**{**values, **overrides})


def rescore(spec, images, labels):
    reward = get_reward(spec, shape=tuple(images.shape[1:]), model=load_digits_model())
    with torch.no_grad():
        return float(reward(images, labels).mean())


def test_latent_reports_held_out_rewards_and_never_optimizes_them(tmp_path):
    plain, plain_out = run_latent(latent_config(tmp_path, "plain"))
    result, out = run_latent(latent_config(tmp_path, "held", eval_reward=HELD_OUT))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(set(NAMES) <= set(row) for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    final = load_file(out / "final.safetensors")
    labels = final["labels"]
    for spec, name in zip(HELD_OUT, NAMES):  # the summary scores the final and start samples
        assert summary[f"final_{name}"] == pytest.approx(rescore(spec, final["images"], labels), abs=1e-5)
        assert summary[f"start_{name}"] == pytest.approx(rescore(spec, final["start_images"], labels), abs=1e-5)
    assert rows[0][NAMES[0]] == pytest.approx(summary[f"start_{NAMES[0]}"], abs=1e-5)  # iteration 0: the start
    # No gradient from them: the same latents, rewards and rows with and without.
    assert torch.equal(result.latents, plain.latents)
    plain_rows = [json.loads(line) for line in (plain_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in rows] == [r["grad_norm"] for r in plain_rows]
    assert not any(key.startswith("eval_reward/") for key in plain_rows[0])


def test_guide_reports_held_out_rewards(tmp_path):
    config = GuideConfig(model="digits", reward="digit-class:7", steps=4, batch=2, device="cpu", progress=False,
                         out=str(tmp_path / "plain"))
    plain, _ = run_guide(config)
    result, out = run_guide(GuideConfig(**{**config.as_dict(), "out": str(tmp_path / "held"),
                                           "eval_reward": HELD_OUT}))
    summary = json.loads((out / "summary.json").read_text())
    final = load_file(out / "final.safetensors")
    labels = torch.ones(2, dtype=torch.long)
    for spec, name in zip(HELD_OUT, NAMES):
        assert summary[f"final_{name}"] == pytest.approx(rescore(spec, final["images"], labels), abs=1e-5)
        assert summary[f"start_{name}"] == pytest.approx(rescore(spec, final["start_images"], labels), abs=1e-5)
    assert torch.equal(result.latents, plain.latents)


def test_finetune_reports_held_out_rewards_per_evaluation(tmp_path, capsys):
    config = FinetuneConfig(model="digits", reward="digit-class:7", cond=["1"], steps=3, batch=2, max_steps=2,
                            eval_every=1, eval_per_class=2, checkpoint_every=0, device="cpu",
                            out=str(tmp_path / "plain"), progress=False, lr=0.01)
    plain = run_finetune(config)
    summary = run_finetune(FinetuneConfig(**{**config.as_dict(), "out": str(tmp_path / "held"),
                                             "eval_reward": HELD_OUT}))
    rows = [json.loads(line) for line in (tmp_path / "held" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(NAMES) <= set(row) for row in rows)  # before, two periodic, final
    after = load_file(tmp_path / "held" / "eval" / "after.safetensors")
    for spec, name in zip(HELD_OUT, NAMES):
        assert summary["after"][name] == pytest.approx(rescore(spec, after["images"], after["labels"]), abs=1e-5)
        assert name in summary["before"]
    # Never optimized: the training is the same with and without them.
    assert summary["rank_weight_digests"] == plain["rank_weight_digests"]
    assert summary["after"]["reward"] == plain["after"]["reward"]


def test_the_option_repeats_and_is_checked(tmp_path, capsys):
    fast = ["latent", "--model", "digits", "--steps", "2", "--iters", "1", "--batch", "2", "--no-progress",
            "--grid-every", "0", "--device", "cpu"]
    assert main([*fast, "--out", str(tmp_path / "a"), "--eval-reward", "ink", "--eval-reward", "digit-match"]) == 0
    printed = capsys.readouterr().out
    assert "held-out reward ink (never optimized)" in printed and "held-out reward digit-match" in printed
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert {f"final_{name}" for name in NAMES} <= set(summary)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["eval_reward"] == HELD_OUT
    for argv, message in [
        ([*fast, "--out", str(tmp_path / "b"), "--eval-reward", "ink", "--eval-reward", "ink"], "given more than once"),
        ([*fast, "--out", str(tmp_path / "c"), "--eval-reward", "no-such-reward"], "unknown reward 'no-such-reward'"),
        (["gradcheck", "--model", "toy", "--steps", "2", "--eval-reward", "ink"], "takes no --eval-reward"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sdo: error: ") and message in err and "Traceback" not in err, err
