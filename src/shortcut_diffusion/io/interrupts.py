"""Ctrl-C and SIGTERM as one exception, so that a run can save its work before it exits.

Inside :func:`interruptible` both SIGINT (Ctrl-C) and SIGTERM (``kill``, a batch scheduler's
time limit) raise :class:`Interrupted`, a ``KeyboardInterrupt`` that carries the signal; the
optimization loops catch it, keep their last good state and report it. Inside :func:`deferred` a
signal waits until the block ends, so that an update of several tensors (an optimizer step and
its counters) is never cut in half.

>>> import os, signal
>>> with interruptible():
...     try:
...         os.kill(os.getpid(), signal.SIGTERM)
...     except Interrupted as error:
...         print(error.name, error.exit_code)
SIGTERM 143
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by the signal ``signum`` (SIGINT for Ctrl-C); ``saved`` says what the
    run kept, for the one line the command prints."""

    def __init__(self, signum: int = signal.SIGINT, saved: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved = int(signum), saved

    def message(self) -> str:
        return f"interrupted by {self.name}" + (f"; {self.saved}" if self.saved else "; nothing was saved")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's code of a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def as_interrupted(error: KeyboardInterrupt) -> Interrupted:
    """``error`` as an :class:`Interrupted` (a plain ``KeyboardInterrupt`` is Ctrl-C); the signal
    counts as handled from here on."""
    global _raised
    _raised = None
    return error if isinstance(error, Interrupted) else Interrupted(signal.SIGINT)


def interrupted_fields(signum: Optional[int]) -> dict[str, object]:
    """What a run's ``summary.json`` says about an interrupt: ``interrupted``, and ``signal`` when it was."""
    return {"interrupted": True, "signal": signal.Signals(signum).name} if signum else {"interrupted": False}


_deferring = 0
_pending: Optional[int] = None
_raised: Optional[int] = None
"""A signal raised as :class:`Interrupted` and not handled yet. Python ignores an exception raised
inside a finalizer (``__del__``), so a handler that happens to run there loses its interrupt;
:func:`raise_unhandled` raises it again at the next safe point."""


def _handler(signum: int, frame) -> None:
    global _pending, _raised
    if _deferring:
        _pending = _pending or signum
        return
    _raised = signum
    raise Interrupted(signum)


def raise_unhandled() -> None:
    """Raise again a signal whose :class:`Interrupted` was swallowed (raised inside a finalizer)."""
    global _raised
    if _raised is not None and not _deferring:
        signum, _raised = _raised, None
        raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only; elsewhere
    signals cannot be handled and the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block is raised as :class:`Interrupted` when it ends."""
    global _deferring, _pending
    with interruptible():
        _deferring += 1
        try:
            yield
        finally:
            _deferring -= 1
            signum = None if _deferring else _pending
            if signum is not None:
                _pending = None
        if signum is not None:
            raise Interrupted(signum)
    raise_unhandled()
