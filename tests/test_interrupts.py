"""Ctrl-C and SIGTERM save the work done so far; non-finite values keep the last good state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from shortcut_diffusion.io.interrupts import Interrupted, deferred, interruptible
from shortcut_diffusion.tasks.latent.optimize import optimize_latent
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.models.testbed import load_digits_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model(tiny_testbed_dir):
    return load_digits_model(tiny_testbed_dir)


def interrupted_run(args: list[str], ready: Callable[[], bool], sig: int) -> tuple[int, list[str]]:
    """Run ``sdo ARGS``, send ``sig`` once ``ready()``; the exit code and the lines of stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "shortcut_diffusion", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.strip().splitlines()


def has_rows(path: Path) -> Callable[[], bool]:
    return lambda: path.is_file() and path.read_text().count("\n") >= 1


# -- the signal machinery --------------------------------------------------------------------------

def test_an_interrupt_a_finalizer_swallowed_is_raised_at_the_next_safe_point():
    """Python ignores an exception raised inside ``__del__``: a signal whose handler runs there
    would be lost (a run that ends with rc 0 after SIGTERM); the next deferred block raises it."""

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs here, inside the finalizer
                pass

    with interruptible(), pytest.raises(Interrupted) as caught:
        Finalized()  # finalized at once: its interrupt is swallowed
        with deferred():
            pass
    assert caught.value.signum == signal.SIGTERM


def test_sigterm_becomes_an_interrupt_and_deferred_waits_for_the_block():
    done = []
    with interruptible(), pytest.raises(Interrupted) as caught:
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the block ran to its end")
    assert done and caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_optimization_returns_its_last_good_latents(model, sig):
    def interrupt(row, latents, images):
        if row["iter"] == 2:
            os.kill(os.getpid(), sig)

    with interruptible():
        result = optimize_latent(model, get_reward("ink"), torch.tensor([1, 7]), steps=4, iters=50, lr=0.2,
                                 progress=False, callback=interrupt)
    assert result.interrupt == sig and signal.Signals(sig).name in result.stopped
    assert len(result.history) == 3 and torch.isfinite(result.latents).all() and torch.isfinite(result.images).all()
    assert result.rewards.mean() > result.start_rewards.mean()  # the progress made is kept


def test_an_interrupted_doodl_run_returns_its_last_complete_update(model):
    seen = []

    def interrupt(row, latents, images):
        seen.append(latents.clone())
        if row["iter"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with interruptible():
        result = optimize_latent(model, get_reward("ink"), [1, 7], estimator="doodl", steps=4, iters=50, lr=0.2,
                                 progress=False, callback=interrupt)
    assert result.interrupt == signal.SIGTERM and "SIGTERM" in result.stopped and len(result.history) == 2
    torch.testing.assert_close(result.latents, seen[-1].cpu(), rtol=0, atol=0)


# -- non-finite values -----------------------------------------------------------------------------

@pytest.mark.parametrize("iters", [1, 3])
def test_a_huge_learning_rate_keeps_the_last_latents_whose_samples_were_finite(model, iters):
    result = optimize_latent(model, get_reward("ink"), torch.tensor([1, 7]), steps=4, iters=iters, lr=1e30,
                             prior_weight=0.0, progress=False)
    assert result.stopped and "non-finite" in result.stopped
    assert result.latents.abs().max() < 10  # not the 1e30 of the first update
    assert torch.isfinite(result.images).all() and torch.isfinite(result.rewards).all()


# -- the commands ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_latent_saves_its_best_result_on_a_signal(tiny_testbed_dir, tmp_path, sig):
    out = tmp_path / "run"
    rc, err = interrupted_run(["latent", "--model", str(tiny_testbed_dir), "--steps", "4", "--iters", "500",
                               "--batch", "2", "--no-progress", "--out", str(out)], has_rows(out / "metrics.jsonl"), sig)
    assert rc == 128 + sig and len(err) == 1 and err[0].startswith(f"sdo: interrupted by {signal.Signals(sig).name}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == signal.Signals(sig).name
    final = load_file(out / "final.safetensors")
    assert torch.isfinite(final["latents"]).all() and torch.isfinite(final["images"]).all()
    assert (out / "before_after.png").is_file() and (out / "grid_0000.png").is_file()


def test_a_reward_that_turns_nan_stops_fine_tuning_with_the_last_good_weights(tiny_testbed_dir, tmp_path):
    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune

    source = ("calls = 0\n"
              "def reward(images, labels):\n"
              "    global calls\n"
              "    calls += 1\n"
              "    r = images.flatten(1).mean(1)\n"
              "    return r + float('nan') if calls > {} else r  # the NaN carries a finite gradient\n")
    (tmp_path / "flaky.py").write_text(source.format(3))
    (tmp_path / "steady.py").write_text(source.format(10**6))
    config = FinetuneConfig(model=str(tiny_testbed_dir), cond=["1"], steps=3, batch=2, max_steps=20, eval_every=0,
                            eval_per_class=1, checkpoint_every=0, device="cpu", reward=f"{tmp_path / 'flaky.py'}:reward",
                            lr=0.05, out=str(tmp_path / "flaky"), progress=False)
    summary = run_finetune(config)
    steps = summary["steps"]
    assert 1 <= steps < 20 and summary["stopped"].startswith(f"non-finite reward at step {steps}")
    assert json.loads((tmp_path / "flaky" / "summary.json").read_text())["stopped"] == summary["stopped"]
    # The weights are those of the last good step: a run of that many steps with a reward that stays finite.
    run_finetune(replace(config, reward=f"{tmp_path / 'steady.py'}:reward", max_steps=steps, out=str(tmp_path / "steady")))
    flaky, steady = (load_file(tmp_path / name / "final" / "pytorch_lora_weights.safetensors") for name in ("flaky", "steady"))
    assert flaky.keys() == steady.keys()
    for k in flaky:
        assert torch.isfinite(flaky[k]).all() and torch.equal(flaky[k], steady[k]), k


def after(path: Path, seconds: float) -> Callable[[], bool]:
    """Ready ``seconds`` after ``path`` appears."""
    seen: list[float] = []

    def ready() -> bool:
        if not seen and path.is_file():
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= seconds

    return ready


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT takes the same path (the latent test sends both)
def test_guide_saves_the_samples_predicted_so_far_on_a_signal(tiny_testbed_dir, tmp_path, sig):
    out = tmp_path / "guide"
    # 1000 guided steps (time travel 10x over all 100 steps): the signal lands inside the pass,
    # which starts right after config.json and the plain samples (a fraction of a second).
    rc, err = interrupted_run(["guide", "--model", str(tiny_testbed_dir), "--steps", "100", "--travel", "10",
                               "--travel-window", "0", "100", "--batch", "2", "--no-progress", "--out", str(out)],
                              after(out / "config.json", 3.0), sig)
    assert rc == 128 + sig and len(err) == 1 and err[0].startswith(f"sdo: interrupted by {signal.Signals(sig).name}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == signal.Signals(sig).name
    assert 0 < summary["network_calls"] < 1000
    final = load_file(out / "final.safetensors")
    assert torch.isfinite(final["images"]).all() and final["images"].abs().max() <= 1
    assert (out / "before_after.png").is_file()


# -- fine-tuning: interrupt, then resume from the run's own options ---------------------------------

def finetune_args(model_dir, out: Path, max_steps: int) -> list[str]:
    return ["finetune", "--model", str(model_dir), "--cond", "1", "7", "--steps", "4", "--batch", "2", "--lr", "0.02",
            "--max-steps", str(max_steps), "--eval-every", "0", "--eval-per-class", "1", "--checkpoint-every", "1000",
            "--device", "cpu", "--no-progress", "--out", str(out)]


def lora_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "pytorch_lora_weights.safetensors")


def test_finetune_interrupt_writes_a_checkpoint_that_resumes_exactly(tiny_testbed_dir, tmp_path):
    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune
    from shortcut_diffusion.tasks.finetune import checkpoint as ckpt

    out = tmp_path / "interrupted"
    metrics = out / "metrics.jsonl"
    rc, err = interrupted_run(finetune_args(tiny_testbed_dir, out, 400),
                              lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2, signal.SIGINT)
    assert rc == 130 and len(err) == 1 and err[0].startswith("sdo: interrupted by SIGINT; checkpoint"), err
    step = json.loads((ckpt.latest_checkpoint(out) / "state.json").read_text())["step"]
    assert 2 <= step < 400 and f"--out {out} --resume" in err[0]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, step + 1))
    # --resume takes every option from the run's config.json; --max-steps may change (it extends the run).
    done = subprocess.run([sys.executable, "-m", "shortcut_diffusion", "finetune", "--out", str(out), "--resume",
                           "--max-steps", str(step + 2), "--no-progress"], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 2
    threads = torch.get_num_threads()
    try:  # the straight run on one thread, as the command ran: the same float summation order
        run_finetune(FinetuneConfig(model=str(tiny_testbed_dir), cond=["1", "7"], steps=4, batch=2, lr=0.02,
                                    max_steps=step + 2, eval_every=0, eval_per_class=1, checkpoint_every=1000,
                                    device="cpu", threads=1, progress=False, out=str(tmp_path / "straight")))
    finally:
        torch.set_num_threads(threads)
    a, b = lora_weights(out), lora_weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_options_that_differ_from_the_run(tiny_testbed_dir, tmp_path, capsys):
    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    assert main(finetune_args(tiny_testbed_dir, out, 1)) == 0
    capsys.readouterr()
    assert main(["finetune", "--out", str(out), "--resume", "--lr", "0.05", "--steps", "4", "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr: run 0.02, given 0.05" in err[0] and "--steps" not in err[0], err
    # With only --out and --resume every option is the run's: it resumes (already at its last step).
    assert main(["finetune", "--out", str(out), "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.02 and config["cond"] == ["1", "7"] and config["max_steps"] == 1 and config["steps"] == 4
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
