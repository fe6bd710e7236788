"""Reward fine-tuning: targets, estimators, resume, bad input (tiny testbed, a few steps each)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.tasks.finetune import FinetuneConfig, load_finetuned, make_target, run_finetune
from shortcut_diffusion.tasks.finetune import checkpoint as ckpt
from shortcut_diffusion.tasks.finetune.evaluation import eval_labels, eval_noise
from shortcut_diffusion.tasks.generate import sample_images
from shortcut_diffusion import load_model
from shortcut_diffusion.sampling.schedulers import make_scheduler


@pytest.fixture
def base_config(tiny_testbed_dir, tmp_path):
    return FinetuneConfig(model=str(tiny_testbed_dir), cond=["1", "7"], steps=4, batch=2, max_steps=2,
                          eval_every=1, eval_per_class=2, checkpoint_every=1, device="cpu",
                          out=str(tmp_path / "run"), progress=False)


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt.latest_checkpoint(out) / "trainable.safetensors")


@pytest.mark.parametrize("target", ["lora", "full", "embedding"])
@pytest.mark.parametrize("estimator", ["sdo:keep=random", "checkpointed", "truncated:k=1", "alignprop", "refl"])
def test_every_target_and_estimator_trains(base_config, target, estimator):
    config = replace(base_config, target=target, estimator=estimator, reward="ink", lr=0.05)
    summary = run_finetune(config)
    out = Path(config.out)
    assert summary["steps"] == 2 and summary["samples"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["grad_norm"] > 0 for r in rows), "the reward must reach the trained tensors"
    before, after = load_file(out / "eval" / "before.safetensors"), load_file(out / "eval" / "after.safetensors")
    assert before["images"].shape == (4, 1, 8, 8) and before["labels"].tolist() == [1, 1, 7, 7]
    assert before["images"].abs().max() <= 1
    assert not torch.equal(before["images"], after["images"]), "training changed nothing"
    assert json.loads((out / "final" / "finetuned.json").read_text())["target"] == target


@pytest.mark.parametrize("target", ["lora", "full", "embedding"])
def test_exported_result_reloads_and_reproduces_the_evaluation_samples(base_config, target):
    config = replace(base_config, target=target, reward="ink", lr=0.05)
    run_finetune(config)
    out = Path(config.out)
    if target == "lora":
        assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()
    model = load_finetuned(load_model(config.model), out / "final")
    labels = eval_labels([1, 7], config.eval_per_class)
    images = sample_images(model, eval_noise(model, len(labels), config.eval_seed), labels, steps=config.steps,
                           scheduler=make_scheduler("ddim", like=model.scheduler), seed=config.eval_seed)
    after = load_file(out / "eval" / "after.safetensors")
    torch.testing.assert_close(images, after["images"], rtol=0, atol=1e-5)
    plain = load_model(config.model)
    untuned = sample_images(plain, eval_noise(plain, len(labels), config.eval_seed), labels, steps=config.steps,
                            scheduler=make_scheduler("ddim", like=plain.scheduler), seed=config.eval_seed)
    torch.testing.assert_close(untuned, load_file(out / "eval" / "before.safetensors")["images"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", ["lora", "full", "embedding"])
def test_base_context_gives_the_untrained_model(tiny_testbed_dir, target):
    model = load_model(str(tiny_testbed_dir))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(500)
    labels = torch.tensor([1, 7])
    original = model.denoiser()(x, t, model.conditioning(labels)).detach()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tgt = make_target(target, model)
    with torch.no_grad():
        for p in tgt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tuned = model.denoiser()(x, t, model.conditioning(labels)).detach()
    assert (tuned - original).abs().max() > 1e-3
    with tgt.base():
        torch.testing.assert_close(model.denoiser()(x, t, model.conditioning(labels)), original)
    torch.testing.assert_close(model.denoiser()(x, t, model.conditioning(labels)).detach(), tuned)
    assert all(p.requires_grad for p in tgt.parameters())


def test_resume_is_exact(base_config, tmp_path):
    config = replace(base_config, max_steps=4, ema=0.5, lr_schedule="constant_with_warmup", lr_warmup=3, kl_weight=0.1, eval_every=2,
                     checkpoint_every=2, reward="ink", lr=0.02)
    straight = run_finetune(replace(config, out=str(tmp_path / "straight")))
    split_out = str(tmp_path / "split")
    run_finetune(replace(config, out=split_out, max_steps=2))
    resumed = run_finetune(replace(config, out=split_out, resume=True))
    assert resumed["steps"] == straight["steps"] == 4
    a, b = final_tensors(tmp_path / "straight"), final_tensors(Path(split_out))
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (Path(split_out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all("kl" in r for r in rows)


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(base_config, tmp_path, damaged, capsys):
    config = replace(base_config, max_steps=3, checkpoint_every=1, keep_checkpoints=2, reward="ink", lr=0.02)
    straight = tmp_path / "straight"
    run_finetune(replace(config, out=str(straight)))
    out = Path(config.out)
    run_finetune(replace(config, max_steps=2))
    newest = ckpt.latest_checkpoint(out)
    assert newest.name == "step-000002"
    path = newest / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # truncated on disk
    capsys.readouterr()
    resumed = run_finetune(replace(config, resume=True))
    err = capsys.readouterr().err
    assert "step-000002" in err and "cannot be read" in err and "resuming from step-000001" in err
    assert resumed["steps"] == 3
    a, b = final_tensors(straight), final_tensors(out)
    for k in a:  # steps 2 and 3 redone from step 1: the same weights as a straight run
        assert torch.equal(a[k], b[k]), k


def test_killed_run_resumes(base_config, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "shortcut_diffusion", "finetune", "--model", base_config.model, "--cond", "1", "7",
            "--steps", "4", "--batch", "2", "--max-steps", "400", "--eval-every", "0", "--eval-per-class", "1",
            "--checkpoint-every", "2", "--device", "cpu", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (ckpt.latest_checkpoint(out) is None or ckpt.latest_checkpoint(out).name < "step-000004"):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((ckpt.latest_checkpoint(out) / "state.json").read_text())["step"]
    assert 4 <= killed_at < 400
    args[args.index("400")] = str(killed_at + 2)
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == killed_at + 2
    straight = tmp_path / "straight"
    run_finetune(replace(base_config, eval_every=0, eval_per_class=1, checkpoint_every=2, max_steps=killed_at + 2,
                         out=str(straight)))
    a, b = final_tensors(out), final_tensors(straight)
    for k in a:  # the killed run used one thread: equal up to float summation order
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_early_stopping_keeps_the_best_weights(base_config):
    # A learning rate this large makes the evaluation reward fall within a few steps.
    config = replace(base_config, max_steps=8, lr=5.0, early_stop=1, early_stop_metric="reward", reward="digit-match")
    summary = run_finetune(config)
    assert summary["stopped"].startswith("early stopping")
    assert summary["steps"] == summary["best_step"] + 1 < 8
    evals = {r["step"]: r for r in map(json.loads, (Path(config.out) / "eval.jsonl").read_text().splitlines()) if not r.get("final")}
    assert evals[summary["steps"]]["reward"] < evals[summary["best_step"]]["reward"]
    # The exported weights are the best step's: their evaluation repeats that step's.
    assert summary["after"]["reward"] == pytest.approx(evals[summary["best_step"]]["reward"], abs=1e-6)
    assert summary["after"]["reward"] == pytest.approx(max(r["reward"] for r in evals.values()), abs=1e-6)


def test_time_budget_stops_training(base_config):
    summary = run_finetune(replace(base_config, max_steps=None, minutes=0.001, eval_every=0))
    assert summary["stopped"] == "time budget" and summary["steps"] >= 1


# -- bad input ----------------------------------------------------------------------------------

def test_unknown_lora_module_is_a_clear_error(base_config):
    with pytest.raises(UsageError, match="not_a_layer.*not found.*to_q"):
        run_finetune(replace(base_config, lora_modules=["to_q", "not_a_layer"]))


def test_empty_prompt_list_is_a_clear_error(base_config, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UsageError, match="no conditions"):
        run_finetune(replace(base_config, prompts_file=str(empty)))
    with pytest.raises(UsageError, match="no conditions"):
        run_finetune(replace(base_config, cond=[]))


def test_resume_refuses_another_configuration(base_config):
    run_finetune(base_config)
    with pytest.raises(ckpt.CheckpointError, match="lora_rank: checkpoint 4, now 8"):
        run_finetune(replace(base_config, resume=True, lora_rank=8, max_steps=3))
    with pytest.raises(ckpt.CheckpointError, match="target"):
        run_finetune(replace(base_config, resume=True, target="embedding", max_steps=3))
    with pytest.raises(UsageError, match="already holds a fine-tuning run"):
        run_finetune(base_config)


def test_resume_without_checkpoint_is_a_clear_error(base_config):
    with pytest.raises(UsageError, match="no checkpoint"):
        run_finetune(replace(base_config, resume=True))


def test_disk_full_while_checkpointing_leaves_the_last_good_checkpoint(base_config, monkeypatch):
    out = Path(base_config.out)
    run_finetune(replace(base_config, max_steps=1))
    good = ckpt.latest_checkpoint(out)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    real_write = ckpt._write

    def failing_write(path, payload):
        if path.name == "optimizer.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, payload)

    monkeypatch.setattr(ckpt, "_write", failing_write)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device.*step-000001, is intact"):
        run_finetune(replace(base_config, max_steps=2, resume=True))
    assert ckpt.latest_checkpoint(out) == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not [p for p in ckpt.checkpoint_dir(out).iterdir() if p.name.endswith(".sdo-tmp")]
    monkeypatch.setattr(ckpt, "_write", real_write)
    assert run_finetune(replace(base_config, max_steps=2, resume=True))["steps"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "dreambooth"}, "unknown target"),
    ({"lr": -1.0}, "--lr"),
    ({"lr_schedule": "cosine", "max_steps": None, "minutes": 1.0}, "needs --max-steps"),
    ({"ema": 1.5}, "--ema"),
    ({"early_stop": 2, "eval_every": 0}, "periodic evaluation"),
    ({"cond": ["12"]}, "out of range"),
])
def test_bad_options(base_config, kwargs, message):
    with pytest.raises(UsageError, match=message):
        run_finetune(replace(base_config, **kwargs))


def test_gradient_accumulation_equals_the_larger_batch(base_config, tmp_path):
    config = replace(base_config, reward="ink", lr=0.05, eval_every=0, checkpoint_every=2, max_steps=2)
    run_finetune(replace(config, batch=4, grad_accum=1, out=str(tmp_path / "big")))
    summary = run_finetune(replace(config, batch=2, grad_accum=2, out=str(tmp_path / "accum")))
    assert summary["global_batch"] == 4
    a, b = final_tensors(tmp_path / "big"), final_tensors(tmp_path / "accum")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0.05 / 100, msg=k)


def test_evaluation_on_held_out_conditions(base_config, capsys):
    """Train on classes 1 and 7, evaluate on 3 and 5 (fixed held-out noise); the training
    classes are reported apart, as seen_* metrics."""
    config = replace(base_config, eval_cond=["3", "5"], max_steps=2, eval_every=1, reward="ink", lr=0.05)
    summary = run_finetune(config)
    out = Path(config.out)
    after = load_file(out / "eval" / "after.safetensors")
    assert after["labels"].tolist() == [3, 3, 5, 5]
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert all({"reward", "seen_reward", "accuracy", "seen_accuracy"} <= set(r) for r in rows)
    panel = {"panel_mlp_accuracy", "panel_knn_accuracy", "panel_forest_accuracy", "panel_read_by_all",
             "panel_agreement", "realism", "saturation"}
    assert all(panel | {f"seen_{k}" for k in panel} <= set(r) for r in rows)
    assert all(r["panel_read_by_all"] <= min(r[f"panel_{j}_accuracy"] for j in ("mlp", "knn", "forest")) for r in rows)
    assert summary["after"]["reward"] != summary["after"]["seen_reward"]
    from shortcut_diffusion.tasks.finetune import describe

    text = describe(summary, out)
    assert "(held-out conditions)" in text and "(training conditions)" in text
    assert "panel (3 judges, never rewards) reads the target class by all: " in text
