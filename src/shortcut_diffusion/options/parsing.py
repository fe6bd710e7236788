"""Config dataclasses generate the command line: one field, one option, its ``help`` from metadata.

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Demo:
...     steps: int = field(default=50, metadata={"help": "sampling steps"})
...     json: bool = field(default=False, metadata={"help": "print JSON"})
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_arguments(parser, Demo)
>>> from_args(Demo, parser.parse_args(["--steps", "10", "--json"]))
Demo(steps=10, json=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from shortcut_diffusion.errors import UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(_option(f.name), action=argparse.BooleanOptionalAction, default=default, **kwargs)
            continue
        origin = typing.get_origin(kind)
        if origin in (list, tuple):
            (item,) = set(typing.get_args(kind)) - {Ellipsis}
            kwargs.update(nargs="+", type=item)
            if f.metadata.get("repeatable"):  # --opt A --opt B gives [A, B] (as does --opt A B)
                kwargs["action"] = "extend"
        elif origin is typing.Union:  # Optional[X]
            kwargs["type"] = next(a for a in typing.get_args(kind) if a is not type(None))
        else:
            kwargs["type"] = kind
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        if "default" not in kwargs["help"] and shown not in (None, ""):  # a help that explains its default keeps it
            kwargs["help"] += f" (default: {shown})"
        parser.add_argument(_option(f.name), default=default, **kwargs)


def given_options(cls: type, argv: Sequence[str]) -> set[str]:
    """The fields of ``cls`` whose options appear on the command line ``argv`` (not left at their defaults)."""
    unset = object()  # a default no option value can be
    probe = argparse.ArgumentParser(add_help=False)
    add_arguments(probe, cls)
    repeatable = {f.name for f in dataclasses.fields(cls) if f.metadata.get("repeatable")}
    # A repeatable option extends its default, so its "unset" is None (extended into a list when given).
    probe.set_defaults(**{f.name: None if f.name in repeatable else unset for f in dataclasses.fields(cls)})
    known, _ = probe.parse_known_args(list(argv))
    return {name for name, value in vars(known).items()
            if value is not unset and not (name in repeatable and value is None)}


def parse_scalar(text: str) -> Any:
    """An option value from a spec string: int, float, true/false/none, or the string itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def resolve_device(name: str) -> "torch.device":
    """A ``--device`` value: ``auto`` is CUDA when available, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; choose cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {name!r} is not supported; choose cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(f"--device {name}: {build}; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}
    return cls(**values)  # type: ignore[call-arg]
