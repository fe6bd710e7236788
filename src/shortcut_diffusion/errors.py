"""The one exception type users see for bad input.

Raised before any work starts, with a one-line message that names the bad value. The CLI prints
it as ``sdo: error: <message>`` and exits with status 2 instead of showing a traceback.
"""


class UsageError(ValueError):
    """Bad input: an unknown name, a value out of range, a shape that does not fit."""


class WriteError(OSError):
    """A file of a run could not be written (a full disk, a read-only file system).

    Nothing half-written is left behind (see :mod:`shortcut_diffusion.io.runfiles`); the CLI prints
    ``sdo: error: could not write FILE: REASON`` and exits with status 1."""

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}"
