"""Every bad input of the table in the bad-input trial: exit status 2, one line naming the option at
fault, no traceback, and nothing left in --out. Each is refused before any sampling (most before
the model loads), so every case takes well under a second or two."""

from __future__ import annotations

import pytest

from shortcut_diffusion import get_estimator
from shortcut_diffusion.cli import main
from shortcut_diffusion.tasks.latent.optimize import check_moves_latent

from test_bad_input_cli import FAST, FAST_FINETUNE, one_line_error

GUIDE = ["guide", "--model", "toy", "--reward", "ink", "--steps", "2", "--batch", "2", "--no-progress", "--device", "cpu"]
DIGITS = ["latent", "--model", "digits", "--reward", "ink", "--steps", "2", "--iters", "1", "--batch", "2",
          "--no-progress", "--grid-every", "0", "--device", "cpu"]
PIPELINE = ["latent", "--model", "{sd}", "--prompt", "a cat", "--reward", "ink", "--steps", "2", "--iters", "1",
            "--batch", "1", "--no-progress", "--grid-every", "0", "--device", "cpu"]
NO_OUT = ("gradcheck", "eval-testbed")
"""Commands without a run directory."""

CASES = {
    # were tracebacks
    "latent --steps 5000": (["latent", *FAST, "--steps", "5000"], "--steps 5000"),
    "gradcheck --steps 5000": (["gradcheck", "--model", "toy", "--estimators", "sdo", "--steps", "5000",
                                "--device", "cpu"], "--steps 5000"),
    "bench --steps 5000": (["bench", "--model", "toy", "--estimators", "sdo", "--steps", "5000", "--batch", "1",
                            "--repeats", "1", "--device", "cpu"], "--steps 5000"),
    "truncated:k=abc": (["latent", *FAST, "--estimator", "truncated:k=abc"], "k='abc' must be a whole number"),
    "pipeline --height 100000": ([*PIPELINE, "--height", "100000"], "--height 100000"),
    "guide --scale 1e30": ([*GUIDE, "--scale", "1e30"], "--scale must be <= 100"),
    "--seed 10**23": (["latent", *FAST, "--seed", str(10**23)], "--seed must be an integer in 0.."),
    "eval-testbed --per-class 0": (["eval-testbed", "--per-class", "0"], "--per-class must be >= 1"),
    "train-testbed --channels 3 5": (["train-testbed", "--channels", "3", "5"], "--channels must be positive multiples"),
    # were runaway memory
    "--reward-views 200000": (["latent", *FAST, "--reward-augment", "crop", "--reward-views", "200000"],
                              "--reward-views must be in 1.."),
    "--lora-rank 100000": (["finetune", *FAST_FINETUNE, "--lora-rank", "100000"], "--lora-rank 100000 is above"),
    # were silently accepted
    "sdo:keep=first,keep=last": (["latent", *FAST, "--estimator", "sdo:keep=first,keep=last"], "keep is given twice"),
    "truncated:k=1.5": (["latent", *FAST, "--estimator", "truncated:k=1.5"], "k=1.5 must be a whole number"),
    "a reward option twice": (["latent", *FAST, "--reward", "compressibility:50,quality=60"], "quality is given twice"),
    "a weighted term twice": (["latent", *FAST, "--reward", "ink=1,ink=2"], "ink is given twice"),
    "digits --prompt": ([*DIGITS, "--prompt", "a cat"], "--prompt is for text-to-image pipelines"),
    "--reward-frames stride:0": (["latent", *FAST, "--reward-frames", "stride:0"], "stride:N needs a whole number"),
    "image model --reward-frames": (["latent", *FAST, "--reward-frames", "last"], "applies to video models"),
    "pipeline --frames": ([*PIPELINE, "--frames", "9"], "--frames applies to video pipelines"),
    "digits --negative-prompt": ([*DIGITS, "--negative-prompt", "a dog"], "--negative-prompt applies to text-to-image"),
    "digits --height": ([*DIGITS, "--height", "64"], "--height applies to text-to-image pipelines"),
    "moving-digits --frames 5": (["latent", "--model", "moving-digits", "--frames", "5"],
                                 "'moving-digits' makes videos of 8 frames only"),
    "SD --cond with --prompt": ([*PIPELINE, "--cond", "3"], "--cond takes class indices"),
    "--lora-alpha 0": (["finetune", *FAST_FINETUNE, "--lora-alpha", "0"], "--lora-alpha must be > 0"),
    "guide --estimator bogus": ([*GUIDE, "--estimator", "bogus"], "sdo guide takes no --estimator"),
    "train-testbed --steps 0": (["train-testbed", "--steps", "0"], "--steps must be >= 1"),
    "train-testbed --cond-dropout 1.5": (["train-testbed", "--cond-dropout", "1.5"], "--cond-dropout must be <= 1"),
    "latent truncated:k=1": (["latent", *FAST, "--estimator", "truncated:k=1"], "--estimator truncated:k=1 stops"),
    "latent refl": (["latent", *FAST, "--estimator", "refl"], "--estimator refl stops the gradient"),
    "latent truncated short of the warm-up": (["latent", *FAST, "--steps", "4", "--warmup", "1", "--prior-weight", "0",
                                               "--estimator", "truncated:k=2"], "--estimator truncated:k=2 stops"),
    # were misleading
    "--eta 1.5": (["latent", *FAST, "--eta", "1.5"], "--eta must be <= 1"),
    "--guidance 1e30": ([*DIGITS, "--guidance", "1e30"], "--guidance must be <= 1000"),
}


@pytest.fixture(scope="module")
def sd_pipeline(tmp_path_factory):
    import tiny_pipelines

    return tiny_pipelines.build("sd", tmp_path_factory.mktemp("table") / "sd")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_option(case, tmp_path, capsys, request):
    argv, message = CASES[case]
    if "{sd}" in argv:
        argv = [str(request.getfixturevalue("sd_pipeline")) if a == "{sd}" else a for a in argv]
        capsys.readouterr()  # what building the pipeline printed
    out = tmp_path / "run"
    if argv[0] not in NO_OUT:
        argv = [*argv, "--out", str(out)]
    err = one_line_error(argv, capsys)
    assert message in err, err
    assert not out.exists(), "a refused run leaves nothing in --out"


@pytest.mark.parametrize("spec", ["sdo", "sdo:keep=last", "full", "checkpointed", "alignprop", "truncated:k=all",
                                  "truncated:k=3", "drtune"])
def test_estimators_that_reach_the_latent_are_accepted(spec):
    check_moves_latent(get_estimator(spec), 3)  # drtune's kept calls stop at their input, but the update carries it


def test_a_ddim_eta_of_one_and_a_large_guidance_still_run(tmp_path, capsys):
    assert main([*DIGITS, "--eta", "1", "--guidance", "30", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "final.safetensors").is_file()
