"""Rewards on the digits testbed, all through its bundled classifier.

``prompts`` on the testbed are the conditioned class labels (a list or tensor of ints).

- ``digit-class:K``: log-probability of class K.
- ``digit-match``: log-probability of the conditioned class (text-image alignment's analogue).
- ``adversarial:K[,weight=W]``: log-probability of K, minus W times the mean squared pixel
  distance to the nearest real training digit of the conditioned class: fool the classifier
  while still looking like the class the sample was generated for.
- ``style:REF``: minus the distance between Gram matrices of the classifier's convolutional
  feature maps and those of a reference digit; ``REF`` is an index into the digits data set or
  the path of an image file (converted to grey, resized to 8x8).
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.images import read_image
from shortcut_diffusion.models.testbed import data
from shortcut_diffusion.rewards.spec import check_images, parse_options

Labels = Union[torch.Tensor, Sequence[int], None]


def _classifier(name: str, context: dict[str, Any]):
    model = context.get("model")
    classifier = model.classifier if model is not None else None
    if classifier is None:
        raise UsageError(f"reward {name} needs the digits testbed's classifier: use it with --model digits")
    return classifier


def _class_index(name: str, text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise UsageError(f"reward {name} needs a class index 0..9, got {text!r}") from None
    if not 0 <= k <= 9:
        raise UsageError(f"reward {name}: class {k} is out of range 0..9")
    return k


def _digit_images(name: str, images: torch.Tensor, classifier: Any = None) -> torch.Tensor:
    """The testbed's classifier scores N x 1 x 8 x 8 images in [-1, 1] (or the frames of its
    ``input_shape``: the moving-digits classifier reads 1 x 16 x 16 frames)."""
    check_images(images, name)
    shape = tuple(getattr(classifier, "input_shape", (1, 8, 8)))
    if tuple(images.shape[1:]) != shape:
        raise UsageError(f"reward {name} scores the digits testbed's {'x'.join(map(str, shape))} images, got shape "
                         f"{tuple(images.shape)}")
    return images


def _labels(name: str, prompts: Labels, batch: int, device: torch.device) -> torch.Tensor:
    if prompts is None:
        raise UsageError(f"reward {name} needs the conditioned class of each sample (prompts)")
    labels = torch.as_tensor(prompts, dtype=torch.long, device=device).flatten()
    if labels.numel() != batch:
        raise UsageError(f"reward {name}: {labels.numel()} labels for {batch} images")
    return labels


def _options(name: str, arg: str, allowed: set[str]) -> tuple[str, dict[str, float]]:
    """``HEAD[,key=number,...]``: the head and the numeric options."""
    options = parse_options(name, arg, ["head", *sorted(allowed)], positional="head")
    head = options.pop("head", "")
    numbers = {}
    for key, value in options.items():
        try:
            numbers[key] = float(value)
        except ValueError:
            raise UsageError(f"reward {name}: option {key} needs a number, got {value!r}") from None
    return head, numbers


class DigitClass:
    """log p(K | image) under the bundled classifier."""

    name = "digit-class"

    def __init__(self, classifier, k: int):
        self.classifier, self.k = classifier, k

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "DigitClass":
        return cls(_classifier(cls.name, context), _class_index(cls.name, arg))

    def __call__(self, images: torch.Tensor, prompts: Labels = None) -> torch.Tensor:
        return F.log_softmax(self.classifier(_digit_images(self.name, images, self.classifier)), dim=1)[:, self.k]


class DigitMatch:
    """log p(conditioned class | image): alignment with the condition."""

    name = "digit-match"

    def __init__(self, classifier):
        self.classifier = classifier

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "DigitMatch":
        if arg:
            raise UsageError(f"reward digit-match takes no argument, got {arg!r}")
        return cls(_classifier(cls.name, context))

    def __call__(self, images: torch.Tensor, prompts: Labels = None) -> torch.Tensor:
        labels = _labels(self.name, prompts, images.shape[0], images.device)
        return F.log_softmax(self.classifier(_digit_images(self.name, images, self.classifier)), dim=1).gather(1, labels[:, None])[:, 0]


class Adversarial:
    """log p(K | image) - weight * (mean squared distance to the nearest real digit of the condition)."""

    name = "adversarial"

    def __init__(self, classifier, k: int, weight: float = 10.0):
        self.classifier, self.k, self.weight = classifier, k, float(weight)
        train = data.load("train")
        self.real = [train.images[train.labels == c] for c in range(10)]

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "Adversarial":
        head, options = _options(cls.name, arg, {"weight"})
        return cls(_classifier(cls.name, context), _class_index(cls.name, head), **options)

    def distance(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean squared pixel distance from each image to the nearest real digit of its class."""
        out = []
        for image, label in zip(images, labels.tolist()):
            real = self.real[label].to(images.device, images.dtype)
            out.append((real - image).square().flatten(1).mean(1).min())
        return torch.stack(out)

    def __call__(self, images: torch.Tensor, prompts: Labels = None) -> torch.Tensor:
        labels = _labels(self.name, prompts, images.shape[0], images.device)
        log_p = F.log_softmax(self.classifier(_digit_images(self.name, images, self.classifier)), dim=1)[:, self.k]
        return log_p - self.weight * self.distance(images, labels)


def gram(feature_map: torch.Tensor) -> torch.Tensor:
    b, c, h, w = feature_map.shape
    f = feature_map.flatten(2)
    return f @ f.transpose(1, 2) / (c * h * w)


def load_reference(ref: str) -> torch.Tensor:
    """A 1x1x8x8 reference digit in [-1, 1] from a data-set index or an image file."""
    if ref.isdigit():
        return data.digit_image(int(ref))[None]
    # Digits are light strokes on a dark background, as in the data set.
    return read_image(ref, channels=1, size=(8, 8), resize=True)[None]


class Style:
    """Minus the summed squared distance between Gram matrices of the classifier's feature maps."""

    name = "style"

    def __init__(self, classifier, reference: torch.Tensor, layers: tuple[int, ...] = (0, 1)):
        self.classifier, self.layers = classifier, layers
        with torch.no_grad():
            maps = classifier.feature_maps(reference.to(next(classifier.parameters()).device))
        self.targets = [gram(maps[i]) for i in layers]

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "Style":
        if not arg:
            raise UsageError("reward style needs a reference: style:INDEX or style:PATH")
        return cls(_classifier(cls.name, context), load_reference(arg))

    def __call__(self, images: torch.Tensor, prompts: Labels = None) -> torch.Tensor:
        maps = self.classifier.feature_maps(_digit_images(self.name, images, self.classifier))
        total = 0.0
        for i, target in zip(self.layers, self.targets):
            total = total + (gram(maps[i]) - target.to(images.dtype)).square().flatten(1).sum(1)
        return -total
