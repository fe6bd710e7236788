"""The bundled digits diffusion model: load, save, sample.

A diffusers ``UNet2DModel`` on 8x8 digits conditioned on a continuous class embedding: an
embedding table outside the UNet (10 classes plus a null row for classifier-free guidance) feeds
``class_embed_type="identity"``, as a prompt embedding feeds Stable Diffusion's UNet. Saved in
the ordinary diffusers layout::

    DIR/unet/                       UNet2DModel.save_pretrained (safetensors)
    DIR/scheduler/                  DDIMScheduler (diffusion) or FlowMatchEulerDiscreteScheduler
                                    (rectified flow, ``digits-flow``).save_pretrained
    DIR/embeddings.safetensors      the class-embedding table ("weight", 11 x D; row 10 = null)
    DIR/classifier.safetensors      the digit classifier used by rewards and metrics
    DIR/judge.safetensors           the held-out judge (never a reward; see judge.py)
    DIR/panel.safetensors           the judge panel's random forest (see judges.py)
    DIR/testbed.json                guidance scale, classifier config/accuracy, metrics, training config
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from safetensors.torch import load_file
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.reporting import atomic_write_bytes, save_tensors
from shortcut_diffusion.io.runfiles import write_dir
from shortcut_diffusion.models.base import TableConditioned
from shortcut_diffusion.models.testbed import metrics
from shortcut_diffusion.models.testbed.classifier import DigitClassifier
from shortcut_diffusion.models.testbed.judge import load_judge, save_judge
from shortcut_diffusion.models.testbed.judges import load_panel

BUNDLED = Path(__file__).parent / "weights"
BUNDLED_FLOW = BUNDLED / "flow"
"""The rectified-flow twin (``digits-flow``): the same network, data and classifier, trained with
the flow-matching objective and sampled with the flow-matching Euler scheduler."""
SCHEDULERS = {cls.__name__: cls for cls in (DDIMScheduler, FlowMatchEulerDiscreteScheduler)}
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES


@dataclass(eq=False)
class DigitsModel(TableConditioned):
    """The testbed as a :class:`~shortcut_diffusion.models.base.DiffusionModel` (class-conditional,
    pixel space, classifier-free guidance through the null row of the embedding table)."""

    family: ClassVar[str] = "digits"
    cpu_threads: ClassVar[Optional[int]] = 1
    unet: UNet2DModel
    embeddings: nn.Embedding
    scheduler: Union[DDIMScheduler, FlowMatchEulerDiscreteScheduler]
    classifier: DigitClassifier
    guidance_scale: float = 2.0
    info: dict[str, Any] = field(default_factory=dict)
    sample_shape: tuple[int, int, int] = (1, 8, 8)
    judge: Optional[nn.Module] = None
    panel: Optional[Any] = None
    """The judge panel (:class:`.judges.JudgePanel`), never a reward, or None."""

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "DigitsModel":
        """Move every network; ``dtype`` casts the frozen diffusion weights (the classifier, a
        reward and a judge, stays float32)."""
        super().to(device, dtype)
        self.classifier.to(device=device, dtype=torch.float32)
        if self.judge is not None:
            self.judge.to(device=device, dtype=torch.float32)
        return self

    def metrics(self, images: torch.Tensor, labels: Sequence[Any]) -> dict[str, float]:
        """digits-FD, conditional accuracy and diversity (from two samples up), and the held-out
        judge's accuracy on the conditioned classes."""
        labels = torch.as_tensor(list(labels))
        row = {}
        if self.judge is not None:
            with torch.no_grad():
                read = self.judge(images.to(next(self.judge.parameters()).device).float()).argmax(1).cpu()
            row["judge_accuracy"] = float((read == labels).float().mean())
        if len(images) < 2:  # a Frechet distance needs two samples
            return row
        return {**metrics.evaluate(self.classifier, images, labels), **row}

    def save(self, directory: Union[str, Path]) -> None:
        directory = Path(directory)
        write_dir(directory / "unet", self.unet.save_pretrained)
        write_dir(directory / "scheduler", self.scheduler.save_pretrained)
        save_tensors(directory / "embeddings.safetensors", {"weight": self.embeddings.weight})
        save_tensors(directory / "classifier.safetensors", self.classifier.state_dict())
        info = {**self.info, "guidance_scale": self.guidance_scale, "classifier_config": self.classifier.config}
        atomic_write_bytes(directory / "testbed.json", (json.dumps(info, indent=2) + "\n").encode())
        if self.judge is not None:
            save_judge(self.judge, float(self.info.get("judge_held_out_accuracy", float("nan"))), directory)
        if self.panel is not None:
            from shortcut_diffusion.models.testbed.judges import save_panel

            save_panel(self.panel, directory)


def load_digits_model(directory: Union[str, Path, None] = None) -> DigitsModel:
    """Load the testbed from ``directory`` (default: the copy bundled with the package)."""
    directory = Path(directory) if directory is not None else BUNDLED
    if not (directory / "testbed.json").is_file():
        raise UsageError(f"no digits testbed at {directory} (testbed.json missing); "
                         "train one with `sdo train-testbed --out DIR`")
    try:
        info = json.loads((directory / "testbed.json").read_text())
        unet = UNet2DModel.from_pretrained(directory / "unet", low_cpu_mem_usage=False).eval().requires_grad_(False)
        scheduler = _load_scheduler(directory / "scheduler")
        weight = load_file(directory / "embeddings.safetensors")["weight"]
        classifier = DigitClassifier(**info["classifier_config"])
        classifier.load_state_dict(load_file(directory / "classifier.safetensors"))
    except Exception as error:  # truncated or foreign files: OSError, SafetensorError, KeyError, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"the digits testbed in {directory} cannot be loaded ({reason}); is a file truncated "
                         "or damaged? train it again with `sdo train-testbed --out DIR`") from None
    embeddings = nn.Embedding.from_pretrained(weight, freeze=True)
    classifier.eval().requires_grad_(False)
    judge = load_judge(directory)
    return DigitsModel(unet, embeddings, scheduler, classifier, guidance_scale=float(info["guidance_scale"]),
                       info=info, judge=judge, panel=load_panel(directory, judge))


def _load_scheduler(directory: Path) -> Union[DDIMScheduler, FlowMatchEulerDiscreteScheduler]:
    """The saved scheduler, of the class its config names (DDIM or flow-matching Euler)."""
    name = json.loads((directory / "scheduler_config.json").read_text()).get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_pretrained(directory)
