"""Package attributes imported on first use (PEP 562), so that importing a package stays light.

``import shortcut_diffusion.cli`` must not pay for torch and diffusers: the packages on its way
export their heavy names through :func:`exports` instead of importing them eagerly.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from its submodule ``table[name]``
    (relative, like ``".sampling"``), imported on first access and then cached in the package."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
