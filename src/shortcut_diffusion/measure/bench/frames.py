"""``sdo bench --frames-grid``: a video model's backward memory as frames and steps grow.

For every frame count of ``--frames-grid`` (the model loaded with ``--frames F``: any model that
takes ``--frames``, the video pipelines, ``random:wan``, a video testbed) and every N of
``--steps``, each estimator's gradient of the reward for a rank-4 LoRA adapter on the network (an
iteration of video reward fine-tuning, where truncation is used), and the bytes its sampling graph
saves for backward (measured by the saved-tensor meter: deterministic, not a timing). Full
backpropagation saves every step's graph over every frame, so it grows with frames x N;
checkpointing saves every step's input (frames x N, smaller); truncation saves its last k steps'
graphs (k x frames: flat in N, but the gradient never reaches the earlier steps); SDO keeps one
step's graph whatever N, and its gradient reaches every step.

All in this process (saved bytes do not depend on the process). Writes ``video_memory.json`` and
``video_memory.md`` (one row per estimator and frame count, one column per N) in ``--out``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io import reporting, rundir
from shortcut_diffusion.measure.bench.config import BenchConfig

GRID_ESTIMATORS = ["full", "checkpointed", "truncated:k=2", "sdo"]
"""The estimators of the grid when ``--estimators`` is left at bench's default."""
GRID_LORA_RANK = 4


def grid_rows(config: BenchConfig, log: Optional[Callable[[str], Any]] = print) -> list[dict[str, Any]]:
    """Saved bytes (and network evaluations) of every estimator at every frames x N."""
    from shortcut_diffusion.gradients import get_method
    from shortcut_diffusion.measure.bench.lora import lora_adapter
    from shortcut_diffusion.measure.gradcheck.run import estimator_gradient
    from shortcut_diffusion.tasks.context import build_context

    rows = []
    for frames in config.frames_grid:
        context = build_context(replace(config, frames=frames), batch=config.batch, steps=max(config.steps),
                                scheduler="auto", progress=False)
        base = lora_adapter(context.model, GRID_LORA_RANK)
        for steps in config.steps:
            for spec in config.estimators:
                method = get_method(spec, seed=config.seed)
                method.check(context.scheduler, steps, task="finetune:lora")
                r = estimator_gradient(context.model, context.scheduler, method, context.reward, target="lora",
                                       steps=steps, labels=context.labels, seed=config.seed,
                                       precision=context.precision, base=base)
                rows.append({"estimator": spec, "frames": frames, "steps": steps, "saved_bytes": r["saved_bytes"],
                             "nfe_forward": r["nfe_forward"], "nfe_backward": r["nfe_backward"]})
                if log:
                    log(f"frames={frames:3d} N={steps:4d} {spec:>14}: saved {r['saved_bytes'] / 2**10:.1f} KiB")
    return rows


def markdown(rows: list[dict[str, Any]], config: BenchConfig, command: str) -> str:
    steps = list(dict.fromkeys(r["steps"] for r in rows))
    by = {(r["estimator"], r["frames"], r["steps"]): r for r in rows}
    lines = ["# Saved bytes for backward as frames and steps grow", "", f"Command: `{command}`", "",
             f"Model `{config.model}`, batch {config.batch}, dtype {config.dtype}, reward `{config.reward}`"
             + (f" on frames `{config.reward_frames}`" if config.reward_frames else "") + f", gradient for a rank-"
             f"{GRID_LORA_RANK} LoRA adapter (an iteration of LoRA fine-tuning). "
             "KiB saved for backward by the sampling graph (the saved-tensor meter: deterministic, weights "
             "excluded).", "",
             "| estimator, frames | " + " | ".join(f"N = {n}" for n in steps) + " |", "|---|" + "---|" * len(steps)]
    for spec in config.estimators:
        for frames in config.frames_grid:
            cells = [f"{by[(spec, frames, n)]['saved_bytes'] / 2**10:.1f}" for n in steps]
            lines.append(f"| {spec}, {frames} frames | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_frames_grid(config: BenchConfig, command: str, log: Optional[Callable[[str], Any]] = print
                    ) -> list[dict[str, Any]]:
    if config.frames is not None:
        raise UsageError("--frames-grid gives the frame counts: drop --frames")
    if min(config.frames_grid) < 1:
        raise UsageError(f"--frames-grid needs positive frame counts, got {config.frames_grid}")
    if config.estimators == BenchConfig().estimators:
        config = replace(config, estimators=list(GRID_ESTIMATORS))
    with rundir.claimed(config.out, "bench", overwrite=config.overwrite) as out:
        rows = grid_rows(config, log)
        reporting.atomic_write_bytes(Path(out) / "video_memory.json", json.dumps(
            {"command": command, "model": config.model, "rows": rows}, indent=1).encode())
        text = markdown(rows, config, command)
        reporting.atomic_write_bytes(Path(out) / "video_memory.md", text.encode())
    if log:
        log(text)
    return rows
