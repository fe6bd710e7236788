"""The files of a run: written whole, with the user's file mode, and listed in the run's manifest.

Every file sdo writes goes through :func:`write_bytes` (:func:`append_bytes` for a log that grows
a line at a time, :func:`write_dir` for a directory another library fills, such as diffusers'
``save_pretrained``):

- **Whole or not at all.** The bytes go to a temporary file ``.NAME.XXXXXXXX.sdo-tmp`` in the same
  directory, are synced, and the temporary is renamed over ``NAME``; a crash or a full disk leaves
  the previous file (or none), never a truncated or empty one. An appended line is taken back when
  it cannot be written in full. A failed write raises :class:`~shortcut_diffusion.errors.WriteError`.
- **One file mode.** Every file is ``0o666 & ~umask``, as ``open()`` would make it, also when it
  went through a temporary file (which is 0600) or was written by another library.
- **Listed.** A file inside a run directory this process holds (``rundir.open_run_dir``) is added,
  by its path relative to the run directory, to the run's manifest ``.sdo-manifest`` (a JSON list,
  itself replaced atomically), before its bytes are written, so that no file of ours is ever
  unlisted. A directory filled by :func:`write_dir` is listed too (with a trailing ``/``), so that
  the temporary of an interrupted fill can be found. :func:`clear` (``--overwrite``) removes
  exactly the listed files that still exist and the temporaries of their interrupted writes, then
  the directories that became empty, and returns every other file it found, at any depth.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Optional, Union

from shortcut_diffusion.errors import WriteError

PathLike = Union[str, "os.PathLike[str]"]
MARKER = ".sdo-run.json"
LOCK = ".sdo-run.lock"
MANIFEST = ".sdo-manifest"
CONTROL = (MARKER, LOCK, MANIFEST)  # a run directory's own bookkeeping, never in its manifest
TEMP_SUFFIX = ".sdo-tmp"
_OPEN: dict[Path, set[str]] = {}  # resolved run directory -> its manifest, while this process holds it


def umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of every file sdo writes: what ``open()`` gives under the current umask."""
    return 0o666 & ~umask()


def _write_all(fd: int, payload: bytes) -> None:
    """The one place bytes reach a file descriptor (tests make it fail as a full disk does)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _failed(error: OSError, path: Path) -> WriteError:
    if isinstance(error, WriteError):
        return error
    return WriteError(error.errno, error.strerror or str(error), str(path))


def _replace(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        try:
            os.fchmod(fd, file_mode())
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (listed first when in a run directory)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record(path)
        _replace(path, payload)
    except OSError as error:
        raise _failed(error, path) from error


def append_bytes(path: PathLike, payload: bytes) -> None:
    """Append ``payload`` (a line) to ``path``: all of it, or nothing (and no empty file) on failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record(path)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies
    except OSError as error:
        raise _failed(error, path) from error
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, payload)
        except OSError as error:
            os.ftruncate(fd, size)
            if created:
                path.unlink(missing_ok=True)
            raise _failed(error, path) from error
    finally:
        os.close(fd)


def write_dir(path: PathLike, fill: Callable[[Path], Any]) -> Path:
    """``fill(directory)`` writes the content of ``path``: in a temporary directory beside it,
    every file then given the umask's mode, synced and listed, before it takes the final name
    (renamed as a whole when ``path`` is new, file by file into an existing one, where the files
    of others stay)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record(path, directory=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
    except OSError as error:
        raise _failed(error, path) from error
    try:
        fill(tmp)
        files = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, str(p)))
        for directory in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            directory.chmod(0o777 & ~umask())
        for file in files:
            file.chmod(file_mode())
            _fsync(file)
        _record([(path / f.relative_to(tmp), False) for f in files])
        if not path.exists():
            os.rename(tmp, path)
        else:
            for file in files:  # in the order written (a checkpoint's state.json last)
                target = path / file.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target)
            shutil.rmtree(tmp)
        _fsync(path.parent)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _failed(error, path) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # (some file systems cannot sync a directory)
    finally:
        os.close(fd)


def record(path: PathLike, directory: bool = False) -> None:
    """List ``path`` in the manifest of every run directory this process holds that contains it."""
    _record([(Path(path), directory)])


def _record(items: Iterable[tuple[Path, bool]]) -> None:
    changed = set()
    for path, directory in items:
        try:
            full = path.parent.resolve() / path.name
        except OSError:
            continue
        for root, entries in _OPEN.items():
            if full.parent == root and full.name in CONTROL:
                continue
            if root not in full.parents:
                continue
            key = full.relative_to(root).as_posix() + ("/" if directory else "")
            if key not in entries:
                entries.add(key)
                changed.add(root)
    for root in changed:
        _save(root, _OPEN[root])


def _save(root: Path, entries: set[str]) -> None:
    _replace(root / MANIFEST, (json.dumps(sorted(entries), indent=0) + "\n").encode())
    record(root / MANIFEST)  # a run inside another run (bench's fine-tuning runs) is that run's too


def load(root: PathLike) -> Optional[set[str]]:
    """The manifest of the run directory ``root``; None when it has none (an older sdo's run)."""
    try:
        entries = json.loads((Path(root) / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return set()  # unreadable: nothing is known to be ours
    return {e for e in entries if isinstance(e, str)} if isinstance(entries, list) else set()


def begin(root: PathLike, entries: Iterable[str] = ()) -> None:
    """Start listing the files written under ``root`` (held by this process), after ``entries``."""
    root = Path(root).resolve()
    _OPEN[root] = set(entries)
    _save(root, _OPEN[root])


def end(root: PathLike) -> None:
    """Stop listing files under ``root`` (its manifest stays on disk)."""
    _OPEN.pop(Path(root).resolve(), None)


def _inside(root: Path, key: str) -> Optional[Path]:
    """The path of manifest entry ``key`` under ``root``; None for a path that leaves the run
    directory (``..``, an absolute path, a folder of ours replaced by a link to elsewhere)."""
    rel = PurePosixPath(key.rstrip("/"))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        return None
    target = root.joinpath(*rel.parts)
    base, parent = root.resolve(), target.parent.resolve()
    return target if parent == base or base in parent.parents else None


def _temp_of(name: str) -> Optional[str]:
    """The name whose atomic write left the temporary ``name`` behind (None: not a temporary)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    return name[1:-len(TEMP_SUFFIX)].rpartition(".")[0] or None


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return False
    return True


def clear(root: PathLike) -> tuple[set[str], list[str]]:
    """Remove the files listed in ``root``'s manifest (see the module docstring).

    Returns the entries still there (a listed file that could not be removed, a listed directory
    that holds files of others) and the paths, relative to ``root``, of every other file kept."""
    root = Path(root)
    entries, remaining = load(root) or set(), set()
    names: dict[Path, set[str]] = {}  # directory -> the names listed in it
    folders: set[Path] = set()  # the directories that hold listed entries: removed when emptied
    for key in sorted(entries):
        target = _inside(root, key)
        if target is None:
            continue
        names.setdefault(target.parent, set()).add(target.name)
        folders.update(p for p in [target.parent, *target.parent.parents] if root in p.parents)
        if key.endswith("/"):
            folders.add(target)
        elif (target.is_file() or target.is_symlink()) and not _remove(target):
            remaining.add(key)
    for directory, listed in names.items():  # temporaries of writes a crash interrupted
        for child in (directory.iterdir() if directory.is_dir() and not directory.is_symlink() else ()):
            if _temp_of(child.name) in listed:
                _remove(child)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            if folder.is_dir():
                remaining.add(folder.relative_to(root).as_posix() + "/")
    _replace(root / MANIFEST, (json.dumps(sorted(remaining), indent=0) + "\n").encode())
    return remaining, others(root, remaining)


def others(root: PathLike, entries: set[str]) -> list[str]:
    """Every file (or link, or empty directory) under ``root`` that is not listed in ``entries``."""
    root, found = Path(root), []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        rel = here.relative_to(root)
        if here != root and not dirs and not files:
            found.append(rel.as_posix() + "/")
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            key = (rel / name).as_posix()
            if key not in entries and not (here == root and name in CONTROL):
                found.append(key)
    return sorted(found)
