"""The bundled digits diffusion model: load, save, sample.

A diffusers ``UNet2DModel`` on 8x8 digits conditioned on a continuous class embedding: an
embedding table outside the UNet (10 classes plus a null row for classifier-free guidance) feeds
``class_embed_type="identity"``, as a prompt embedding feeds Stable Diffusion's UNet. Saved in
the ordinary diffusers layout::

    DIR/unet/                       UNet2DModel.save_pretrained (safetensors)
    DIR/scheduler/                  DDIMScheduler.save_pretrained
    DIR/embeddings.safetensors      the class-embedding table ("weight", 11 x D; row 10 = null)
    DIR/classifier.safetensors      the digit classifier used by rewards and metrics
    DIR/testbed.json                guidance scale, classifier config/accuracy, metrics, training config
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError
from ..models.denoisers import ClassifierFreeGuidance, UNet2DDenoiser
from ..sampling import sample
from .classifier import DigitClassifier

BUNDLED = Path(__file__).parent / "weights"
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES


@dataclass
class DigitsModel:
    unet: UNet2DModel
    embeddings: nn.Embedding
    scheduler: DDIMScheduler
    classifier: DigitClassifier
    guidance_scale: float = 2.0
    info: dict[str, Any] = field(default_factory=dict)
    sample_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = NUM_CLASSES

    def cond(self, labels: torch.Tensor) -> torch.Tensor:
        """Class embeddings for integer labels (the "prompt embeddings" of the testbed)."""
        return self.embeddings(labels.to(self.embeddings.weight.device))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents  # pixel space: the sample is the image

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @property
    def uncond(self) -> torch.Tensor:
        return self.embeddings.weight[NULL_CLASS : NULL_CLASS + 1].detach()

    def guided(self, scale: Optional[float] = None) -> ClassifierFreeGuidance:
        scale = self.guidance_scale if scale is None else scale
        return ClassifierFreeGuidance(UNet2DDenoiser(self.unet), self.uncond, scale=scale)

    @property
    def denoiser(self) -> ClassifierFreeGuidance:
        return self.guided()

    def to(self, device: Union[str, torch.device]) -> "DigitsModel":
        for module in (self.unet, self.embeddings, self.classifier):
            module.to(device)
        return self

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, steps: int = 50, seed: int = 0, batch: int = 500,
                 scheduler: Any = None, guidance: Optional[float] = None) -> torch.Tensor:
        """Class-conditional samples (no grad), from seeded noise, in batches."""
        device = self.embeddings.weight.device
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((len(labels), *self.sample_shape), generator=gen).to(device)
        out = []
        for i in range(0, len(labels), batch):
            out.append(sample(self.guided(guidance), scheduler or self.scheduler, x[i : i + batch],
                              steps=steps, cond=self.cond(labels[i : i + batch]), generator=seed + 1).sample)
        return torch.cat(out).clamp(-1, 1).cpu()

    def save(self, directory: Union[str, Path]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.scheduler.save_pretrained(directory / "scheduler")
        save_file({"weight": self.embeddings.weight.detach().contiguous().cpu()}, directory / "embeddings.safetensors")
        save_file({k: v.contiguous().cpu() for k, v in self.classifier.state_dict().items()},
                  directory / "classifier.safetensors")
        info = {**self.info, "guidance_scale": self.guidance_scale, "classifier_config": self.classifier.config}
        (directory / "testbed.json").write_text(json.dumps(info, indent=2) + "\n")


def load_digits_model(directory: Union[str, Path, None] = None) -> DigitsModel:
    """Load the testbed from ``directory`` (default: the copy bundled with the package)."""
    directory = Path(directory) if directory is not None else BUNDLED
    if not (directory / "testbed.json").is_file():
        raise UsageError(f"no digits testbed at {directory} (testbed.json missing); "
                         "train one with `sdo train-testbed --out DIR`")
    info = json.loads((directory / "testbed.json").read_text())
    unet = UNet2DModel.from_pretrained(directory / "unet", low_cpu_mem_usage=False).eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(directory / "scheduler")
    weight = load_file(directory / "embeddings.safetensors")["weight"]
    embeddings = nn.Embedding.from_pretrained(weight, freeze=True)
    classifier = DigitClassifier(**info["classifier_config"])
    classifier.load_state_dict(load_file(directory / "classifier.safetensors"))
    classifier.eval().requires_grad_(False)
    return DigitsModel(unet, embeddings, scheduler, classifier,
                       guidance_scale=float(info["guidance_scale"]), info=info)
