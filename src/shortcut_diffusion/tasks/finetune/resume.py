"""``sdo finetune --out DIR --resume``: the options come from the run's own ``config.json``.

Every option not given again on the command line is the run's. An option given again that changes
the training itself (:data:`.config.RESUME_KEYS`, the batch, the accumulation) must have the run's
value, else the resume is refused with the differences named; the others (``--max-steps``,
``--minutes``, evaluation and checkpoint intervals, ...) may change, e.g. to extend a run.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.tasks.finetune.config import RESUME_KEYS, FinetuneConfig

NOT_INHERITED = ("out", "device", "progress", "resume", "overwrite")
"""Options that describe this invocation, not the run (``config.json`` holds the device used)."""
MUST_MATCH = (*RESUME_KEYS, "batch", "grad_accum")


def _same(a: Any, b: Any) -> bool:
    """Equal as the JSON of config.json reads (tuples are lists there)."""
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def _shown(value: Any) -> str:
    return "the default" if value is None else " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def resumed_config(config: FinetuneConfig, given: set[str]) -> FinetuneConfig:
    """``config`` (from a command line that gave the options ``given``) completed from the run's
    config.json; unchanged when ``--out`` holds none (the resume then says what is missing)."""
    try:
        saved = json.loads((Path(config.out) / "config.json").read_text())
    except (OSError, ValueError):
        return config
    names = {f.name for f in fields(FinetuneConfig)} & set(saved)
    differ = [n for n in MUST_MATCH if n in given and n in saved and not _same(getattr(config, n), saved[n])]
    if differ:
        details = "; ".join(f"{_option(n)}: run {_shown(saved[n])}, given {_shown(getattr(config, n))}" for n in differ)
        raise UsageError(f"--resume: {config.out} was started with other options ({details}); drop them to take "
                         "the run's, or start a new --out")
    return replace(config, **{n: saved[n] for n in names - given - set(NOT_INHERITED)})
