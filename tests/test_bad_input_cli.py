"""Bad input from the command line: exit status 2 and one line that names the fix, never a
traceback; and rewards that break their contract are refused instead of optimizing nothing."""

from __future__ import annotations

import shutil
import textwrap

import pytest
import torch

from shortcut_diffusion.cli import main

FAST = ["--model", "toy", "--reward", "ink", "--steps", "2", "--iters", "1", "--batch", "2", "--no-progress",
        "--grid-every", "0", "--device", "cpu"]
FAST_FINETUNE = ["--model", "toy", "--reward", "ink", "--steps", "2", "--max-steps", "1", "--batch", "2",
                 "--cond", "1", "--eval-every", "0", "--eval-per-class", "1", "--checkpoint-every", "0",
                 "--no-progress", "--device", "cpu"]

USER_REWARDS = textwrap.dedent("""
    import torch

    def wide(images, prompts=None):
        return images.flatten(1)[:, :64]

    def boom(images, prompts=None):
        raise ValueError("the reward model is not loaded")

    def constant(images, prompts=None):
        return torch.zeros(len(images))

    def scalar(images, prompts=None):
        return images.mean()

    def not_finite(images, prompts=None):
        return images.mean(dim=(1, 2, 3)) / 0.0
""")


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdo: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["latent", "finetune"])
@pytest.mark.parametrize("options,message", [
    (["--betas", "1.5", "0.9"], "--betas needs two numbers in [0, 1)"),
    (["--betas", "0.9"], "--betas needs two numbers"),
    (["--clip-grad", "-1"], "--clip-grad must be >= 0"),
    (["--eta", "-1"], "--eta must be >= 0"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--lr", "inf"], "learning rate must be > 0 and finite"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--reward-views", "0"], "--reward-views must be in 1.."),
    (["--height", "0"], "--height must be at least 8"),
])
def test_bad_options(command, options, message, tmp_path, capsys):
    base = FAST if command == "latent" else FAST_FINETUNE
    err = one_line_error([command, *base, *options, "--out", str(tmp_path / "run")], capsys)
    assert message in err
    assert not (tmp_path / "run").exists(), "bad options are found before the run directory is made"


@pytest.mark.parametrize("options,message", [
    (["--prior-weight", "nan"], "regularizer weights must be >= 0 and finite"),
    (["--warmup", "2"], "0 <= warmup < steps"),
    (["--init", "photo"], "--init must be noise or invert:REF"),
    (["--estimator", "doodl", "--warmup", "1"], "--estimator doodl optimizes the initial noise"),
    (["--estimator", "adjoint:k=2"], "adjoint takes no options"),
])
def test_bad_latent_options(options, message, tmp_path, capsys):
    assert message in one_line_error(["latent", *FAST, *options, "--out", str(tmp_path / "run")], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys):
    err = one_line_error(["latent", *FAST, "--device", "cuda", "--out", str(tmp_path / "run")], capsys)
    assert "--device cuda" in err and "--device cpu" in err


@pytest.mark.parametrize("damage", ["truncated unet", "garbage classifier", "missing embeddings"])
def test_a_damaged_testbed_directory(damage, tiny_testbed_dir, tmp_path, capsys):
    model = tmp_path / "testbed"
    shutil.copytree(tiny_testbed_dir, model)
    if damage == "truncated unet":
        weights = model / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage classifier":
        (model / "classifier.safetensors").write_bytes(b"not a safetensors file")
    else:
        (model / "embeddings.safetensors").unlink()
    err = one_line_error(["latent", "--model", str(model), "--no-progress", "--out", str(tmp_path / "run")], capsys)
    assert "cannot be loaded" in err and "truncated" in err


def test_a_damaged_pipeline_directory(pipeline_dirs, tmp_path, capsys):
    model = tmp_path / "sd"
    shutil.copytree(pipeline_dirs["sd"], model)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    err = one_line_error(["latent", "--model", str(model), "--prompt", "a cat", "--no-progress",
                          "--out", str(tmp_path / "run")], capsys)
    assert "could not load the pipeline" in err and "truncated" in err


@pytest.mark.parametrize("name,message", [
    ("wide", "64] for"),
    ("boom", "raised ValueError: the reward model is not loaded (at user_rewards.py:"),
    ("constant", "does not depend differentiably on the images"),
    ("scalar", "returned shape [] for"),
    ("not_finite", "returned non-finite values"),
])
@pytest.mark.parametrize("command", ["latent", "finetune"])
def test_user_rewards_that_break_the_contract(command, name, message, tmp_path, capsys):
    path = tmp_path / "user_rewards.py"
    path.write_text(USER_REWARDS)
    base = FAST if command == "latent" else FAST_FINETUNE
    argv = [command, *[a for a in base], "--out", str(tmp_path / "run")]
    argv[argv.index("ink")] = f"{path}:{name}"
    err = one_line_error(argv, capsys)
    assert message in err
    if name == "boom":
        assert "in boom)" in err


def test_a_batch_that_cannot_fit_is_refused_with_one_that_does(tmp_path, capsys):
    err = one_line_error(["latent", "--batch", "100000000", "--no-progress", "--out", str(tmp_path / "run")], capsys)
    assert "--batch 100000000 needs about" in err and "or fewer" in err


def test_resume_and_overwrite_together(tmp_path, capsys):
    err = one_line_error(["finetune", *FAST_FINETUNE, "--resume", "--overwrite", "--out", str(tmp_path / "r")], capsys)
    assert "pass one of them" in err


def test_version(capsys):
    from shortcut_diffusion import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"sdo {__version__}"


def test_help_states_each_default_once_and_the_demo_its_own_directory(capsys):
    from shortcut_diffusion.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        assert "(default: the model's) (default:" not in text and "(default: None)" not in text, name
    demo = " ".join(commands["demo"].format_help().split())
    assert "runs/demo" in demo and "runs/latent" not in demo


def test_the_latent_only_methods_are_refused_by_finetune(tmp_path, capsys):
    err = one_line_error(["finetune", *FAST_FINETUNE, "--estimator", "doodl", "--out", str(tmp_path / "run")], capsys)
    assert "optimizes latents (sdo latent)" in err and not (tmp_path / "run").exists()
