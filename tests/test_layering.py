"""The layering contract of pyproject.toml ([tool.importlinter]) holds: imports point down the layers
and no package's modules import each other in a cycle. Architecture drift fails the suite."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on ``root``'s package with ``root``'s contract (no cache written)."""
    assert LINT.is_file(), f"{LINT} is missing: pip install -e '.[test]' installs import-linter"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layering_contract():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_the_contract_reports_an_upward_import_and_a_cycle(tmp_path):
    """The same contract on a copy with one upward import (the sampling loop reaching up to the
    CLI) and one two-module cycle fails, naming both."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    package = tmp_path / "src" / "shortcut_diffusion"
    shutil.copytree(ROOT / "src" / "shortcut_diffusion", package,
                    ignore=shutil.ignore_patterns("weights", "__pycache__"))
    with open(package / "sampling" / "loop.py", "a") as f:
        f.write("\nfrom shortcut_diffusion.cli import main  # noqa\n")
    with open(package / "errors.py", "a") as f:
        f.write("\nfrom shortcut_diffusion import lazy  # noqa\n")
    with open(package / "lazy.py", "a") as f:
        f.write("\nfrom shortcut_diffusion import errors  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout
    assert "shortcut_diffusion.sampling is not allowed to import shortcut_diffusion.cli" in done.stdout
    assert "No cycles are allowed in shortcut_diffusion." in done.stdout
