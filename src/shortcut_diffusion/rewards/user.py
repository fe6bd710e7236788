"""``PATH.py:NAME``: a reward from the user's own file.

``NAME`` is a callable ``reward(images, prompts) -> tensor[batch]``, or a class or factory taking no
arguments that returns one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UsageError


def load_user_reward(spec: str):
    """``PATH.py:NAME`` -> the reward it defines."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"reward file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"sdo_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: report what failed
        raise UsageError(f"could not import {path}: {type(error).__name__}: {error}") from error
    if not hasattr(module, name):
        raise UsageError(f"{path} defines no {name!r}")
    obj = getattr(module, name)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise UsageError(f"{path}:{name} is not callable")
    return obj
