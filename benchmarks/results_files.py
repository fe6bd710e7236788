"""Writing a benchmark's outputs: the same files to its run folder and, with ``--docs``, beside the docs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


def write_outputs(outputs: dict[str, Union[str, bytes]], out: Union[str, Path], stem: str,
                  docs: Optional[Union[str, Path]] = None) -> None:
    """``outputs`` (``{suffix: content}``) as ``out/stem.suffix`` and, with ``docs``, as
    ``docs/stem_cpu.suffix`` (the CPU results the docs cite)."""
    targets = [(Path(out), stem)] + ([(Path(docs), f"{stem}_cpu")] if docs else [])
    for folder, name in targets:
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, content in outputs.items():
            path = folder / f"{name}.{suffix}"
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
