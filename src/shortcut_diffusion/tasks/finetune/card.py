"""The model card (``README.md``) written beside an exported fine-tuning result: what was trained
from what, against which reward with which estimator, the evaluation before and after, and how to
load it (with diffusers for a pipeline, with sdo for the built-in models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shortcut_diffusion.io import reporting

CARD = "README.md"
BOOKKEEPING = ("step", "wall_clock", "samples", "final")
"""Evaluation-row keys that are not metrics."""


def _evaluation_table(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key, value in after.items():
        if key in BOOKKEEPING or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        old = before.get(key)
        lines.append(f"| {key} | {'' if old is None else f'{old:.4g}'} | {value:.4g} |")
    return lines


def _loading(model: Any, target: str, base: str, directory: Path, image: Any = None) -> list[str]:
    """The loading snippet: diffusers for a pipeline that can take the result, sdo otherwise."""
    pipe = getattr(model, "pipe", None)
    if pipe is not None and target == "lora" and hasattr(pipe, "load_lora_weights"):
        return ["```python", "from diffusers import DiffusionPipeline", "",
                f"pipe = DiffusionPipeline.from_pretrained({base!r})",
                f"pipe.load_lora_weights({str(directory)!r})", "```"]
    if pipe is not None and target == "full":
        cls, name = type(model.network).__name__, getattr(model, "network_name", "unet")  # pixel pipelines: unet
        return ["```python", f"from diffusers import DiffusionPipeline, {cls}", "",
                f"{name} = {cls}.from_pretrained({str(directory / 'unet')!r})",
                f"pipe = DiffusionPipeline.from_pretrained({base!r}, {name}={name})",
                "```"]
    load = f"load_model({base!r}" + (f", image={str(image)!r})" if image else ")")  # image-to-video: its image
    return ["```python", "from shortcut_diffusion import load_model", "from shortcut_diffusion.tasks.finetune import load_finetuned",
            "", f"model = load_finetuned({load}, {str(directory)!r})", "```"]


def write_model_card(directory: Path, model: Any, config: Any, summary: dict[str, Any]) -> Path:
    """``directory/README.md`` for the result exported there, from the run's ``config`` and ``summary``."""
    directory = Path(directory)
    target = summary["target"]
    lines = [f"# {config.model}, fine-tuned ({target}) against `{config.reward}`", "",
             f"Trained with `sdo finetune` (shortcut-diffusion): {target} of the base model `{config.model}`, "
             f"reward `{config.reward}`, gradient estimator `{summary['estimator']}`, {summary['steps']} optimizer "
             f"steps of {summary['global_batch']} samples ({config.steps} sampling steps, learning rate "
             f"{config.learning_rate:g}, stopped: {summary['stopped']}).", "",
             "## Evaluation", "",
             f"The same fixed noise ({config.eval_per_class} samples per condition) before and after training:", "",
             *_evaluation_table(summary["before"], summary["after"]), "",
             "## Loading", "", *_loading(model, target, config.model, directory, getattr(config, "image", None)), ""]
    path = directory / CARD
    reporting.atomic_write_bytes(path, "\n".join(lines).encode())
    return path
