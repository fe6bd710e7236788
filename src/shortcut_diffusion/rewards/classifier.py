"""``classifier:NAME[,target=K|avoid=K,size=S,mean=,std=,...]``: an image classifier as a reward.

``NAME`` picks an ``nn.Module`` that maps normalised images to logits, by name only (a spec string
never names code to run):

- ``torchvision/MODEL``: a torchvision classification model (``torchvision/resnet50,weights=DEFAULT``);
- ``timm/MODEL``: a timm model (``timm/convnext_tiny,pretrained=true``);
- a name added with :func:`register_classifier` (from Python).

``MODULE:CLASS`` imports the user's module ``MODULE`` and builds its ``nn.Module`` subclass
``CLASS``; importing runs that module's code, so it is refused unless the caller allows it
(``allow_code=True``, ``--allow-code``). Other ``key=value`` options go to the model's constructor.
Images are resized to ``size`` (default 224, bilinear, antialiased) and normalised with the
ImageNet mean and std (or ``mean=``/``std=`` as ``a+b+c``). The reward is the log-probability of
class ``target`` (targeted generation) or minus that of class ``avoid`` (adversarial: move away
from the true class).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from shortcut_diffusion.options.parsing import parse_scalar
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.spec import check_images
from shortcut_diffusion.rewards.user import import_user_module, run_user_code

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIERS: dict[str, Callable[..., torch.nn.Module]] = {}
OPTIONS = ("target", "avoid", "size", "mean", "std")


def register_classifier(name: str, factory: Callable[..., torch.nn.Module]) -> None:
    """Make ``classifier:NAME`` build ``factory(**options)`` (an ``nn.Module`` mapping images to logits)."""
    if ":" in name or "," in name or "=" in name or name.split("/")[0] in SOURCES:
        raise ValueError(f"a classifier name has no ':', ',' or '=' and is not under torchvision/ or timm/: {name!r}")
    CLASSIFIERS[name] = factory


def _package(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UsageError(f"reward classifier:{name}/... needs {name}: pip install {name}") from None


def _torchvision(model: str, **options) -> torch.nn.Module:
    models = _package("torchvision").models
    if model not in models.list_models(module=models):
        raise UsageError(f"torchvision has no classification model {model!r}; see torchvision.models.list_models()")
    return models.get_model(model, **options)


def _timm(model: str, **options) -> torch.nn.Module:
    timm = _package("timm")
    if not timm.is_model(model):
        raise UsageError(f"timm has no model {model!r}; see timm.list_models()")
    return timm.create_model(model, **options)


SOURCES = {"torchvision": _torchvision, "timm": _timm}


def _user_class(head: str, allow_code: bool) -> Callable[..., torch.nn.Module]:
    """``MODULE:CLASS``, only when running the user's code is allowed, and only an nn.Module subclass."""
    module, _, name = head.rpartition(":")
    if not allow_code:
        raise UsageError(f"reward classifier:{head} would import the Python module {module!r}, which runs its code; "
                         "pass --allow-code to allow that, or name a classifier: torchvision/MODEL, timm/MODEL"
                         + "".join(f", {n}" for n in CLASSIFIERS))
    cls = getattr(import_user_module(module), name, None)
    if cls is None:
        raise UsageError(f"{module} has no {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise UsageError(f"{head} is a {type(cls).__name__}, not an nn.Module subclass; classifier:MODULE:CLASS "
                         "builds a torch.nn.Module subclass only")
    return cls


def build_classifier(head: str, options: dict[str, Any], allow_code: bool = False) -> torch.nn.Module:
    """The classifier network ``head`` names (see the module docstring), built with ``options``."""
    if ":" in head:
        factory = _user_class(head, allow_code)
    elif head.partition("/")[0] in SOURCES and head.partition("/")[2]:
        source, _, model = head.partition("/")
        factory = functools.partial(SOURCES[source], model)
    elif head in CLASSIFIERS:
        factory = CLASSIFIERS[head]
    else:
        raise UsageError(f"unknown classifier {head!r}; name one: torchvision/MODEL, timm/MODEL"
                         + "".join(f", {n}" for n in CLASSIFIERS) + " (or MODULE:CLASS with --allow-code)")
    model = run_user_code(f"could not build the classifier {head}", lambda: factory(**options))
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"the classifier {head} is a {type(model).__name__}, not an nn.Module")
    return model


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split("+"))
    except ValueError:
        raise UsageError(f"reward classifier: mean and std are numbers joined by '+', got {text!r}") from None


def _integer(options: dict[str, str], key: str) -> Optional[int]:
    if key not in options:
        return None
    try:
        return int(options[key])
    except ValueError:
        raise UsageError(f"reward classifier: {key} must be an integer, got {options[key]!r}") from None


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
    def from_spec(cls, arg: str = "", allow_code: bool = False, **context) -> "ClassifierReward":
        head, _, rest = arg.partition(",")
        if not head:
            raise UsageError("reward classifier needs a classifier name, e.g. classifier:torchvision/resnet50,"
                             "weights=DEFAULT,target=207")
        factory_kwargs, options = {}, {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"reward classifier: option {item!r} must look like key=value")
            if key in OPTIONS:
                options[key] = value
            else:
                factory_kwargs[key] = parse_scalar(value)
        target, avoid, size = _integer(options, "target"), _integer(options, "avoid"), _integer(options, "size")
        if (target is None) == (avoid is None):
            raise UsageError("reward classifier needs exactly one of target=K (targeted) or avoid=K (adversarial)")
        if size is not None and size < 1:
            raise UsageError(f"reward classifier: size must be >= 1, got {size}")
        return cls(build_classifier(head, factory_kwargs, allow_code), target=target, avoid=avoid,
                   size=224 if size is None else size,
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
