"""The command line builds, and every command renders its --help, without torch or diffusers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "numpy")

PROBE = """
import contextlib, io, sys
import shortcut_diffusion.cli as cli
parser = cli.build_parser()
commands = parser._subparsers._group_actions[0].choices
rendered = []
for argv in [["--help"], ["--version"]] + [[name, "--help"] for name in commands]:
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            cli.main(argv)
        except SystemExit as stop:
            assert stop.code == 0, (argv, stop.code)
    rendered.append(len(text.getvalue()))
assert min(rendered) > 0 and len(rendered) == len(commands) + 2, rendered
print(sorted(commands))
print(" ".join(name for name in {heavy!r} if name in sys.modules))
"""


def _probe() -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_help_of_every_command_imports_no_torch_or_diffusers():
    commands, heavy = _probe()
    assert "latent" in commands and "finetune" in commands and "train-testbed" in commands
    assert heavy == "", f"building the parser imported {heavy}"


def test_the_package_exports_its_heavy_names_on_first_use():
    import shortcut_diffusion
    from shortcut_diffusion import generate, load_model  # noqa: F401 (the lazy exports resolve)

    assert callable(shortcut_diffusion.sample) and shortcut_diffusion.Precision.__name__ == "Precision"
    assert all(getattr(shortcut_diffusion, name) is not None for name in shortcut_diffusion.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        shortcut_diffusion.nonexistent  # noqa: B018


def test_the_torch_free_name_tables_match_the_objects_they_name():
    from shortcut_diffusion.options import choices
    from shortcut_diffusion import precision
    from shortcut_diffusion.sampling import schedulers
    from shortcut_diffusion.tasks.finetune import targets

    assert tuple(precision.DTYPES) == choices.DTYPES
    assert tuple(schedulers.SCHEDULERS) == choices.SCHEDULERS
    assert targets.TARGETS == choices.FINETUNE_TARGETS
