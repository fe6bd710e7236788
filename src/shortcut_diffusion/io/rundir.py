"""Run directories: created, claimed and replaced without ever touching what sdo did not write.

Every command that writes a run directory (``sdo latent``, ``sdo demo``, ``sdo finetune``,
``sdo bench``, ``sdo train-testbed``) goes through :func:`open_run_dir`, before any model is
loaded, so that a bad ``--out`` fails at once:

- The directory is marked as ours by a small file, ``.sdo-run.json`` (the command that wrote it,
  the package version, the time). A non-empty directory without that mark is refused: it may hold
  a user's files, and sdo never deletes what it did not create.
- Every file a run writes is listed in the run's manifest, ``.sdo-manifest``, before it is
  written (:mod:`shortcut_diffusion.io.runfiles`).
- A directory of an earlier run of the same command is refused unless ``--overwrite`` is given
  (or ``--resume``, for fine-tuning). ``--overwrite`` removes exactly the files the manifest lists,
  at any depth, then the directories that became empty, and keeps every other file, saying which.
  A run directory of an older sdo, which kept no manifest, is refused even with ``--overwrite``:
  sdo cannot tell its files from the user's there, so the user deletes it or picks another ``--out``.
- The directory is locked (``fcntl.flock`` on ``.sdo-run.lock``) for the life of the run, so a
  second run on the same ``--out`` fails with a clear message instead of mixing its files into the
  first run's. The lock goes away with the process, also when it is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from shortcut_diffusion.io import runfiles
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.runfiles import LOCK, MANIFEST, MARKER
from shortcut_diffusion.version import __version__

SHOWN = 10  # the kept files --overwrite names, at most
KINDS = {"latent": "latent-optimization", "finetune": "fine-tuning", "bench": "benchmark",
         "train-testbed": "testbed-training", "guide": "guided-sampling"}
_HELD: dict[str, int] = {}  # resolved path -> lock file descriptor, held until the process ends
_CREATED: dict[str, Optional[list[Path]]] = {}  # resolved path -> the directories open_run_dir created
# for it, when it found it missing or empty (None: it held a run already)


def _is_ours(path: Path) -> Optional[dict]:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _check_writable(path: Path) -> list[Path]:
    """Create ``path`` (and parents) and prove a file can be written there; UsageError if not.

    Returns the directories it created, deepest first."""
    try:
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} exists and is not a directory; choose a directory")
        created = [p for p in [path, *path.parents] if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".sdo-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"--out {path} cannot be written: {reason}; choose a directory you can write to") from None
    return created


def _lock(path: Path) -> None:
    import fcntl

    key = str(path.resolve())
    if key in _HELD:  # a run of this very process is still writing there
        raise UsageError(f"--out {path} is in use by another sdo run (pid {os.getpid()}, this process); "
                         "choose another --out")
    runfiles.record(path / LOCK)  # (a run inside another run: the outer one's file)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)  # (the umask applies, as to every file of a run)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UsageError(f"--out {path} is in use by another sdo run (pid {holder}); wait for it to "
                         "finish or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[key] = fd


def release(path: Path) -> None:
    """Give up the lock on ``path`` (it is also released when the process exits)."""
    runfiles.end(path)
    fd = _HELD.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def _clear(path: Path) -> None:
    """Remove the files of the earlier run listed in the manifest; name the files kept."""
    if runfiles.load(path) is None and runfiles.others(path, set()):
        release(path)
        raise UsageError(f"--out {path} holds a run of an older sdo that kept no list of its files, so "
                         "--overwrite cannot tell them from yours; delete the directory yourself "
                         "or choose another --out")
    _, kept = runfiles.clear(path)
    if kept:
        shown = ", ".join(kept[:SHOWN]) + (f" and {len(kept) - SHOWN} more" if len(kept) > SHOWN else "")
        print(f"sdo: --overwrite kept files it did not write in {path}: {shown}", file=sys.stderr)


def open_run_dir(out: str | os.PathLike, command: str, *, overwrite: bool = False,
                 resume: bool = False, resumable: bool = False) -> Path:
    """Claim ``out`` for a run of ``command`` (see the module docstring) and return it.

    ``resume`` continues an earlier run of the command in place. ``resumable`` marks a directory
    that holds a run which ``resume`` could continue (for the error message).
    """
    path = Path(out)
    created = _check_writable(path)
    entries = [e for e in path.iterdir() if e.name != LOCK and not e.name.startswith(".sdo-write-test-")]
    _CREATED[str(path.resolve())] = created if not entries else None
    mark = _is_ours(path)
    if entries and mark is None and not (resume and resumable):
        raise UsageError(f"--out {path} is not empty and was not written by sdo; sdo never deletes files "
                         "it did not create: choose a new or empty directory")
    if entries and mark is not None and mark.get("command") != command:
        raise UsageError(f"--out {path} holds an sdo {mark.get('command')} run, not an sdo {command} run; "
                         "choose another --out")
    _lock(path)  # only in an empty directory or one of ours; a running owner is reported first
    if entries and not resume:
        if not overwrite:
            release(path)
            hint = "pass --resume to continue it, " if resumable else ""
            raise UsageError(f"--out {path} already holds a {KINDS.get(command, command)} run (sdo {command}); "
                             f"{hint}pass --overwrite to replace it, or choose another --out")
        _clear(path)
    try:
        if mark is None or not resume:
            from shortcut_diffusion.io.reporting import write_json

            write_json(path / MARKER, {"command": command, "version": __version__,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        runfiles.begin(path, runfiles.load(path) or ())  # a resumed run goes on with its list
    except BaseException:
        release(path)
        raise
    return path


@contextlib.contextmanager
def claimed(out: str | os.PathLike, command: str, **options) -> Iterator[Path]:
    """:func:`open_run_dir` for the duration of a ``with`` block; the lock is released after it."""
    path = open_run_dir(out, command, **options)
    try:
        yield path
    except BaseException:
        _undo_if_unused(path)
        raise
    finally:
        release(path)


def _undo_if_unused(path: Path) -> None:
    """A run that failed before writing anything (bad input found after loading the model) leaves
    no trace: the mark, the manifest, the lock and the directories created for it are removed,
    nothing else."""
    created = _CREATED.pop(str(path.resolve()), None)
    if created is None or {e.name for e in path.iterdir()} - {MARKER, LOCK, MANIFEST}:
        return
    (path / MARKER).unlink(missing_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)
    release(path)
    (path / LOCK).unlink(missing_ok=True)
    for directory in created:
        try:
            directory.rmdir()  # only empty directories: never anything with content
        except OSError:
            break
