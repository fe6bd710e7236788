"""Run directories: sdo never deletes what it did not write, and two runs never share one."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from shortcut_diffusion import UsageError
from shortcut_diffusion.io import runfiles
from shortcut_diffusion.cli import main
from shortcut_diffusion.errors import WriteError
from shortcut_diffusion.io.rundir import LOCK, MARKER, claimed, open_run_dir, release

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
    from shortcut_diffusion.io.rundir import open_run_dir
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

    from shortcut_diffusion.io.reporting import write_json
    from shortcut_diffusion.io.runfiles import file_mode

    out = tmp_path / "run"
    assert main(["latent", *FAST_LATENT, "--out", str(out)]) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {file_mode()}, modes
    write_json(tmp_path / "s.json", {"reward": float("nan"), "rows": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: 1 / 0) == {"reward": None, "rows": [None, 1.0]}


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_overwrite_of_a_latent_run_removes_all_its_files_and_keeps_user_files_at_every_depth(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["latent", *FAST_LATENT[:-2], "--iters", "2", "--grid-every", "1", "--out", str(out)]) == 0
    first = _tree(out)
    assert "grid_0001.png" in first and ".sdo-manifest" in first
    mine = {"notes.md": "n", "plots/mine.png": "p", "plots/deep/er/data.csv": "d"}
    for rel, text in mine.items():
        _write(out / rel, text)
    _write(out / ".final.safetensors.abcd1234.sdo-tmp", "")  # left by a write a crash interrupted
    capsys.readouterr()
    assert main(["latent", *FAST_LATENT, "--out", str(out), "--overwrite"]) == 0  # writes no grids
    err = capsys.readouterr().err
    assert "kept files it did not write" in err and "plots/deep/er/data.csv" in err and "grid_0001.png" not in err
    assert all((out / rel).read_text() == text for rel, text in mine.items())
    after = _tree(out)
    assert not [name for name in after if name.startswith("grid_") or name.endswith(".sdo-tmp")]
    assert set(after) - set(mine) == set(first) - {n for n in first if n.startswith("grid_")}


def test_overwrite_of_a_finetune_run_keeps_user_files_inside_its_folders(tiny_testbed_dir, tmp_path, capsys):
    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune

    config = FinetuneConfig(model=str(tiny_testbed_dir), cond=["1"], steps=2, batch=1, max_steps=2, eval_every=1,
                            eval_per_class=1, checkpoint_every=1, keep_checkpoints=1, target="full", reward="ink",
                            device="cpu", out=str(tmp_path / "run"), progress=False)
    run_finetune(config)
    out = tmp_path / "run"
    first = _tree(out)
    assert {"eval/grid_step_000001.png", "final/unet/config.json", "checkpoints/step-000002/state.json"} <= set(first)
    assert not (out / "checkpoints" / "step-000001").exists()  # pruned
    mine = {"eval/my_notes.txt": "a", "final/mine/important.txt": "b", "final/unet/why.txt": "c",
            "checkpoints/step-000002/README": "d", "checkpoints/mine/deeper/x.bin": "e"}
    for rel, text in mine.items():
        _write(out / rel, text)
    capsys.readouterr()
    run_finetune(replace_config(config, overwrite=True, eval_every=0, checkpoint_every=0))
    err = capsys.readouterr().err
    assert "final/mine/important.txt" in err and "checkpoints/step-000002/README" in err
    assert all((out / rel).read_text() == text for rel, text in mine.items())
    after = set(_tree(out))
    assert not [n for n in after if n.startswith("eval/grid_step_000001") or n.endswith(".safetensors") and "step-" in n]
    assert not (out / "checkpoints" / "step-000002" / "state.json").exists()
    assert (out / "final" / "unet" / "config.json").is_file() and (out / "summary.json").is_file()
    listed = {entry for entry in runfiles.load(out) if not entry.endswith("/")}  # (folders end in /)
    assert sorted(after - set(mine)) == sorted(listed | {".sdo-manifest", ".sdo-run.json", ".sdo-run.lock"})


def replace_config(config, **changes):
    from dataclasses import replace

    return replace(config, **changes)


def test_a_run_of_an_older_sdo_without_a_manifest_is_refused_by_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["latent", *FAST_LATENT, "--out", str(out)]) == 0
    (out / ".sdo-manifest").unlink()
    before = _tree(out)
    assert main(["latent", *FAST_LATENT, "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "older sdo" in err and "--overwrite cannot tell" in err and err.count("\n") == 1
    assert _tree(out) == before


def test_a_listed_path_that_leaves_the_run_directory_is_never_removed(tmp_path):
    outside = tmp_path / "elsewhere" / "grid.png"
    _write(outside, "user")
    out = tmp_path / "run"
    with claimed(out, "latent"):
        _write(out / "a" / "x.png", "ours")
        runfiles.record(out / "a" / "x.png")
    import shutil

    shutil.rmtree(out / "a")
    (out / "a").symlink_to(outside.parent)  # a folder of ours replaced by a link to the user's
    (out / ".sdo-manifest").write_text('["a/grid.png", "../elsewhere/grid.png", "/etc/hostname"]')
    with claimed(out, "latent", overwrite=True):
        pass
    assert outside.read_text() == "user"


def test_disk_full_in_latent_is_one_line_and_leaves_no_empty_or_partial_file(tmp_path, capsys, monkeypatch):
    real = runfiles._write_all

    def full_disk(fd, payload):
        if payload[:4] == b"\x89PNG":
            real(fd, payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, payload)

    monkeypatch.setattr(runfiles, "_write_all", full_disk)
    out = tmp_path / "run"
    assert main(["latent", *FAST_LATENT, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sdo: error: could not write ") and "No space left on device" in err
    assert err.count("\n") == 1 and ".png" in err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".png" or p.name.endswith(".sdo-tmp")]
    assert not [p for p in files if p.stat().st_size == 0 and p.name != LOCK]


def test_an_append_that_fails_is_taken_back(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    runfiles.append_bytes(log, b'{"step": 1}\n')
    real = runfiles._write_all

    def full_disk(fd, payload):
        real(fd, payload[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfiles, "_write_all", full_disk)
    for path in (log, tmp_path / "new.jsonl"):
        with pytest.raises(WriteError, match="No space left"):
            runfiles.append_bytes(path, b'{"step": 2}\n')
    assert log.read_bytes() == b'{"step": 1}\n' and not (tmp_path / "new.jsonl").exists()


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_every_artefact_follows_the_umask_testbed_and_full_finetune_included(umask_027, tiny_testbed_dir, tmp_path):
    import stat

    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune
    from shortcut_diffusion.tasks.testbed import TrainTestbedConfig, train_testbed

    testbed = tmp_path / "testbed"
    train_testbed(TrainTestbedConfig(out=str(testbed), steps=2, batch=8, channels=[8, 16], warmup=1,
                                     classifier_epochs=1, judge_epochs=1, eval_per_class=0), progress=False, log=None)
    tuned = tmp_path / "tuned"
    run_finetune(FinetuneConfig(model=str(tiny_testbed_dir), cond=["1"], steps=2, batch=1, max_steps=1, eval_every=0,
                                eval_per_class=1, checkpoint_every=1, target="full", reward="ink", device="cpu",
                                out=str(tuned), progress=False))
    for root in (testbed, tuned):
        modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}
        assert "unet/diffusion_pytorch_model.safetensors" in modes or "final/unet/diffusion_pytorch_model.safetensors" in modes
        files = {k: m for k, m in modes.items() if (root / k).is_file()}
        assert set(files.values()) == {0o640}, files
        assert {m for k, m in modes.items() if k not in files} == {0o750}, modes


@pytest.mark.parametrize("command", ["latent", "finetune"])
def test_an_out_name_too_long_is_one_line_naming_out(command, tmp_path, capsys):
    out = tmp_path / ("a" * 300)
    assert main([command, "--model", "toy", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdo: error: --out") and "File name too long" in err and err.count("\n") == 1
