"""``classifier:MODULE:CALLABLE[,target=K|avoid=K,size=S,weights=W]``: any image classifier.

``MODULE:CALLABLE`` names a factory or class returning an ``nn.Module`` that maps normalised
images to logits, torchvision/timm style (``torchvision.models:resnet50,weights=DEFAULT``,
``timm:create_model`` with ``name=...``, or your own ``mypkg.models:Net``). Images are resized to
``size`` (default 224, bilinear, antialiased) and normalised with the ImageNet mean and std (or
``mean=``/``std=`` as ``a+b+c``). The reward is the log-probability of class ``target``
(targeted generation) or minus that of class ``avoid`` (adversarial: move away from the true
class).
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import parse_scalar
from ..errors import UsageError
from .spec import check_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def import_callable(module: str, name: str):
    try:
        mod = importlib.import_module(module)
    except ImportError as error:
        raise UsageError(f"cannot import {module!r} for the classifier reward: {error} "
                         f"(install it, e.g. pip install {module.split('.')[0]})") from None
    if not hasattr(mod, name):
        raise UsageError(f"{module} has no {name!r}")
    return getattr(mod, name)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split("+"))


class ClassifierReward:
    def __init__(self, model: torch.nn.Module, *, target: Optional[int] = None, avoid: Optional[int] = None,
                 size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if (target is None) == (avoid is None):
            raise UsageError("reward classifier needs exactly one of target=K (targeted) or avoid=K (adversarial)")
        self.model = model.eval().requires_grad_(False)
        self.target, self.avoid, self.size = target, avoid, size
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "ClassifierReward":
        head, _, rest = arg.partition(",")
        module, sep, name = head.rpartition(":")
        if not sep or not module or not name:
            raise UsageError("reward classifier needs MODULE:CALLABLE, e.g. classifier:torchvision.models:resnet50,"
                             "weights=DEFAULT,target=207")
        factory_kwargs, options = {}, {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"reward classifier: option {item!r} must look like key=value")
            if key in ("target", "avoid", "size", "mean", "std"):
                options[key] = value
            else:
                factory_kwargs[key] = parse_scalar(value)
        model = import_callable(module, name)(**factory_kwargs)
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{module}:{name} returned {type(model).__name__}, not an nn.Module")
        return cls(model, target=int(options["target"]) if "target" in options else None,
                   avoid=int(options["avoid"]) if "avoid" in options else None,
                   size=int(options.get("size", 224)),
                   mean=_floats(options["mean"]) if "mean" in options else IMAGENET_MEAN,
                   std=_floats(options["std"]) if "std" in options else IMAGENET_STD)

    def to(self, device) -> "ClassifierReward":
        self.model.to(device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "classifier")
        x = (images.float() + 1) / 2
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        logits = self.model(self.preprocess(images).to(device))
        logp = F.log_softmax(logits.float(), dim=-1)
        return logp[:, self.target] if self.target is not None else -logp[:, self.avoid]
