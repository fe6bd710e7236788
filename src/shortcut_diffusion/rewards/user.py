"""``PATH.py:NAME``: a reward from the user's own file. Loading it runs that file's code.

``NAME`` is a callable ``reward(images, prompts) -> tensor[batch]``, or a class or factory taking no
arguments that returns one. Whatever the user's code raises while it loads (``SystemExit`` and
``KeyboardInterrupt`` included) is reported as one :class:`UsageError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, TypeVar

from shortcut_diffusion.errors import UsageError

T = TypeVar("T")


def run_user_code(what: str, call: Callable[[], T]) -> T:
    """``call()``, which runs the user's code; anything it raises becomes one line naming ``what``
    (an exit or an interrupt from that code too: it must not end the run silently)."""
    try:
        return call()
    except UsageError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as error:
        detail = f": {error}" if str(error) else ""
        raise UsageError(f"{what}: {type(error).__name__}{detail}") from error


def import_user_module(module: str) -> Any:
    """The Python module ``module``, imported (which runs its code)."""
    return run_user_code(f"could not import {module}", lambda: importlib.import_module(module))


def check_no_arguments(cls: type, what: str) -> None:
    """``cls()`` must be possible: a reward class is built without arguments."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    needed = [p.name for p in signature.parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        raise UsageError(f"{what} is a class whose constructor needs arguments ({', '.join(needed)}); a reward class "
                         "is built without any: give them defaults")


def load_user_reward(spec: str):
    """``PATH.py:NAME`` -> the reward it defines (running the file)."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"reward file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"sdo_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    run_user_code(f"could not import {path}", lambda: module_spec.loader.exec_module(module))
    if not hasattr(module, name):
        raise UsageError(f"{path} defines no {name!r}")
    obj = getattr(module, name)
    if isinstance(obj, type):
        check_no_arguments(obj, f"reward {spec}")
        obj = run_user_code(f"reward {spec} failed to build", obj)
    if not callable(obj):
        raise UsageError(f"{path}:{name} is not callable")
    return obj
