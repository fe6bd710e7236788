"""Run directories: sdo never deletes what it did not write, and two runs never share one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from shortcut_diffusion import UsageError
from shortcut_diffusion.cli import main
from shortcut_diffusion.rundir import LOCK, MARKER, claimed, open_run_dir, release

FAST_LATENT = ["--model", "toy", "--reward", "neg-mse", "--cond", "1", "--batch", "1", "--steps", "2", "--iters", "1",
               "--no-progress", "--grid-every", "0"]


def _user_files(root):
    (root / "code").mkdir(parents=True)
    (root / "thesis.txt").write_text("four years of work")
    (root / "code" / "main.py").write_text("print('hi')")


@pytest.mark.parametrize("command", ["latent", "demo"])
def test_a_directory_of_user_files_is_refused_and_left_alone(command, tmp_path, capsys):
    out = tmp_path / "mine"
    _user_files(out)
    assert main([command, *FAST_LATENT, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdo: error: ") and "not written by sdo" in err and err.count("\n") == 1
    assert (out / "thesis.txt").read_text() == "four years of work"
    assert (out / "code" / "main.py").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["code", "thesis.txt"]


def test_overwrite_does_not_remove_user_files_either(tmp_path, capsys):
    out = tmp_path / "mine"
    _user_files(out)
    assert main(["latent", *FAST_LATENT, "--out", str(out), "--overwrite"]) == 2
    assert (out / "thesis.txt").is_file()


def test_an_earlier_run_needs_overwrite_and_overwrite_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["latent", *FAST_LATENT, "--out", str(out)]) == 0
    assert (out / MARKER).is_file() and (out / "final.safetensors").is_file()
    assert main(["latent", *FAST_LATENT, "--out", str(out)]) == 2
    assert "already holds a latent-optimization run" in capsys.readouterr().err
    (out / "notes.md").write_text("my notes on this run")
    (out / "summary.json").write_text("{}")  # ours: replaced
    assert main(["latent", *FAST_LATENT, "--out", str(out), "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "kept files it did not write" in captured.err and "notes.md" in captured.err
    assert (out / "notes.md").read_text() == "my notes on this run"
    assert (out / "summary.json").read_text() != "{}"


def test_a_run_of_another_command_is_refused(tmp_path):
    with claimed(tmp_path / "run", "bench") as out:
        (out / "results.csv").write_text("x")
    with pytest.raises(UsageError, match="holds an sdo bench run, not an sdo latent run"):
        open_run_dir(tmp_path / "run", "latent", overwrite=True)


def test_an_empty_directory_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    with claimed(tmp_path / "empty", "latent") as out:
        assert (out / MARKER).is_file()


HOLDER = textwrap.dedent("""
    import sys, time
    from shortcut_diffusion.rundir import open_run_dir
    open_run_dir(sys.argv[1], "latent")
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_second_concurrent_run_on_one_directory_fails(tmp_path, capsys):
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["latent", *FAST_LATENT, "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"in use by another sdo run (pid {holder.pid})" in err and err.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: the directory is usable again
    with claimed(out, "latent", overwrite=True):
        pass


def test_the_same_process_cannot_claim_a_directory_twice(tmp_path):
    path = open_run_dir(tmp_path / "run", "latent")
    try:
        with pytest.raises(UsageError, match="in use by another sdo run"):
            open_run_dir(tmp_path / "run", "latent", overwrite=True)
    finally:
        release(path)
    assert (path / LOCK).exists()


@pytest.mark.parametrize("case", ["file", "proc", "read-only"])
def test_unwritable_out_is_one_line_before_loading(case, tmp_path, capsys, monkeypatch):
    if case == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
        message = "exists and is not a directory"
    elif case == "proc":
        out = "/proc/sdo-run"
        message = "cannot be written"
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o500)
        out = parent / "run"
        message = "cannot be written: Permission denied"
        if os.geteuid() == 0:  # root writes anyway: the file system's refusal, as a read-only one gives it
            from pathlib import Path

            def refuse(self, data):
                raise PermissionError(13, "Permission denied", str(self))

            monkeypatch.setattr(Path, "write_bytes", refuse)
    assert main(["latent", "--model", "toy", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdo: error: --out") and message in err and err.count("\n") == 1


def test_every_file_of_a_run_has_the_same_mode_and_summaries_are_strict_json(tmp_path):
    import json
    import stat

    from shortcut_diffusion.reporting import write_json
    from shortcut_diffusion.runfiles import file_mode

    out = tmp_path / "run"
    assert main(["latent", *FAST_LATENT, "--out", str(out)]) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {file_mode()}, modes
    write_json(tmp_path / "s.json", {"reward": float("nan"), "rows": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: 1 / 0) == {"reward": None, "rows": [None, 1.0]}
