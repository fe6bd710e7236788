"""CLIP-based rewards through transformers: ``clip``, ``aesthetic``, ``pickscore``, ``clip-style``.

Images come in NCHW in [-1, 1] (checked); the preprocessing of each model's published image
processor (resize of the shortest edge, centre crop, normalisation with its mean and std) is
redone in torch so that gradients flow, reading the sizes and statistics from the model's own
``preprocessor_config.json``. Models load from a local directory or a hub id with
``CLIPModel.from_pretrained`` (transformers is installed with diffusers' text encoders; no
open_clip or torchvision needed).

- ``clip[:MODEL][,tokenizer=T]``: cosine similarity between the image and its prompt (default
  ``openai/clip-vit-large-patch14``); MODEL is a transformers CLIP or an open_clip ViT model
  (directory or hub repository with ``open_clip_config.json``, see :mod:`.openclip`).
- ``aesthetic[:head=PATH,clip=MODEL]``: the LAION aesthetic predictor: the L2-normalised CLIP
  ViT-L/14 image embedding through its head; ``head`` is the head's weights (a ``.pth`` or
  ``.safetensors`` state dict of the linear head, ``weight``/``bias``, or of the MLP of the
  "improved aesthetic predictor", ``layers.*``), read with ``weights_only``.
- ``pickscore[:MODEL]``: PickScore (``yuvalkirstain/PickScore_v1``; processor
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``): ``logit_scale * cos(image, prompt)``.
- ``clip-style:REF[,model=MODEL,layers=4+8]``: minus the distance between Gram matrices of CLIP
  vision hidden states of the image and of a reference image file (the paper's style task).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.images import read_image
from shortcut_diffusion.rewards.openclip import OPENAI_MEAN, OPENAI_STD, is_open_clip, load_open_clip
from shortcut_diffusion.rewards.spec import check_images, parse_options
from shortcut_diffusion.rewards.weights import OFFLINE_HINT, hub_offline

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - installed with the pipelines
        raise UsageError("this reward needs transformers: pip install transformers") from error
    return transformers


def _load(cls_name: str, source: str, what: str):
    cls = getattr(_transformers(), cls_name)
    offline = not Path(source).is_dir() and hub_offline()
    try:
        return cls.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as error:
        reason = (f"{OFFLINE_HINT} (give a local directory, or download it while online)" if offline else
                  f"{str(error).splitlines()[0]} (give a local directory or a hub id; HF_HUB_OFFLINE=1 reads only the cache)")
        raise UsageError(f"could not load the {what} from {source!r}: {reason}") from error


class ClipPreprocess(nn.Module):
    """The image processor's transform in torch: [-1, 1] -> resize shortest edge (bicubic,
    antialiased; the long edge truncated to an integer, as both transformers and torchvision do) ->
    centre crop -> normalise. Differentiable.

    ``crop_offset`` is where an odd margin goes: ``"floor"`` as transformers' image processors,
    ``"round"`` as torchvision's ``CenterCrop`` (open_clip, BLIP).
    """

    def __init__(self, shortest_edge: int, crop: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 crop_offset: str = "floor"):
        super().__init__()
        if crop_offset not in ("floor", "round"):
            raise ValueError(f"crop_offset must be 'floor' or 'round', got {crop_offset!r}")
        self.shortest_edge, self.crop, self.crop_offset = shortest_edge, crop, crop_offset
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def torchvision(cls, size: int, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD) -> "ClipPreprocess":
        """torchvision's ``Resize(size)``, ``CenterCrop(size)``, ``Normalize(mean, std)``: the eval
        transform of open_clip and BLIP."""
        return cls(size, (size, size), mean, std, crop_offset="round")

    @classmethod
    def from_processor(cls, processor: Any) -> "ClipPreprocess":
        size, crop = processor.size, processor.crop_size
        edge = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
        edge = edge or (size["height"] if hasattr(size, "__getitem__") else size.height)
        crop_hw = (crop["height"], crop["width"]) if hasattr(crop, "__getitem__") else (crop.height, crop.width)
        return cls(int(edge), (int(crop_hw[0]), int(crop_hw[1])), processor.image_mean, processor.image_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        short, long = sorted((h, w))
        new_long = max(1, int(self.shortest_edge * long / short))
        size = (self.shortest_edge, new_long) if h <= w else (new_long, self.shortest_edge)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        if self.crop_offset == "round":
            top, left = round((size[0] - self.crop[0]) / 2), round((size[1] - self.crop[1]) / 2)
        else:
            top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        x = x[..., max(top, 0) : max(top, 0) + self.crop[0], max(left, 0) : max(left, 0) + self.crop[1]]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class _ClipBase:
    """A transformers CLIPModel with its processor's transform and tokenizer, frozen."""

    def __init__(self, model: Any, processor: Any, name: str, preprocess: Optional[ClipPreprocess] = None):
        """``processor``: a CLIPProcessor; or, with ``preprocess`` given, the tokenizer alone."""
        self.model = model.eval().requires_grad_(False)
        if preprocess is None:
            preprocess = ClipPreprocess.from_processor(getattr(processor, "image_processor", processor))
        self.preprocess = preprocess
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.name = name
        self._text: dict[str, torch.Tensor] = {}

    @staticmethod
    def load(source: str, processor_source: Optional[str] = None):
        model = _load("CLIPModel", source, "CLIP model")
        processor = _load("CLIPProcessor", processor_source or source, "CLIP processor")
        return model, processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.name)
        pixels = self.preprocess(images.to(self.device)).to(next(self.model.parameters()).dtype)
        out = self.model.get_image_features(pixel_values=pixels)
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        if prompts is None or not len(prompts) or not isinstance(prompts[0], str):
            raise UsageError(f"reward {self.name} needs the prompt of each sample (a text-to-image model)")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", truncation=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                out = self.model.get_text_features(**tokens)
                out = getattr(out, "pooler_output", out)
            for p, e in zip(missing, F.normalize(out.float(), dim=-1)):
                self._text[p] = e
        return torch.stack([self._text[p] for p in prompts])

    def to(self, device) -> "_ClipBase":
        self.model.to(device)
        return self


class ClipScore(_ClipBase):
    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "ClipScore":
        options = parse_options("clip", arg, ["model", "tokenizer"], positional="model")
        source = options.get("model", DEFAULT_CLIP)
        if not (Path(source).is_dir() and is_open_clip(source)):
            try:
                return cls(*cls.load(source), name="clip")
            except UsageError:
                if Path(source).is_dir() or not is_open_clip(source):
                    raise
        return cls.from_open_clip(source, options.get("tokenizer"))

    @classmethod
    def from_open_clip(cls, source: str, tokenizer: Optional[str] = None) -> "ClipScore":
        """An open_clip model (directory or hub repository, see :mod:`.openclip`). Its tokenizer:
        ``tokenizer``, else the one saved with the model, else OpenAI CLIP's (open_clip's ViT models
        share its vocabulary)."""
        model, pre = load_open_clip(source)
        if tokenizer is None:
            has_own = not Path(source).is_dir() or any((Path(source) / f).is_file() for f in ("vocab.json", "tokenizer.json"))
            tokenizer = source if has_own else DEFAULT_CLIP
        preprocess = ClipPreprocess.torchvision(pre["size"], pre["mean"], pre["std"])
        return cls(model, _load("CLIPTokenizer", tokenizer, "CLIP tokenizer"), name="clip", preprocess=preprocess)

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)


class PickScore(_ClipBase):
    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "PickScore":
        options = parse_options("pickscore", arg, ["model", "processor"], positional="model")
        model, _ = cls.load(options.get("model", PICKSCORE), options.get("processor", PICKSCORE_PROCESSOR))
        processor = _load("CLIPProcessor", options.get("processor", PICKSCORE_PROCESSOR), "CLIP processor")
        return cls(model, processor, name="pickscore")

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        scale = self.model.logit_scale.exp().float()
        return scale * (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)


class AestheticHead(nn.Module):
    """The LAION aesthetic heads: linear (``weight``, ``bias``) or the improved predictor's MLP
    (``layers.0/2/4/6/7``: 1024, 128, 64, 16, 1 with dropout between, which is inactive here)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        if "weight" in state:
            self.net = nn.Linear(state["weight"].shape[1], 1)
            self.net.load_state_dict(state)
        elif "layers.0.weight" in state:
            dims = [state["layers.0.weight"].shape[1]] + [state[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)]
            self.net = nn.Sequential(
                nn.Linear(dims[0], dims[1]), nn.Dropout(0.2), nn.Linear(dims[1], dims[2]), nn.Dropout(0.2),
                nn.Linear(dims[2], dims[3]), nn.Dropout(0.1), nn.Linear(dims[3], dims[4]), nn.Linear(dims[4], dims[5]))
            self.net.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
        else:
            raise UsageError("the aesthetic head must be a linear head (weight, bias) or the MLP head (layers.*)")
        self.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str) -> "AestheticHead":
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"aesthetic head weights not found at {path}: download the LAION aesthetic predictor "
                             "head (e.g. sa_0_4_vit_l_14_linear.pth) and pass head=PATH")
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return cls(load_file(file))
        return cls(torch.load(file, map_location="cpu", weights_only=True))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.net(embeds).squeeze(-1)


class Aesthetic(_ClipBase):
    def __init__(self, model: Any, processor: Any, head: AestheticHead):
        super().__init__(model, processor, name="aesthetic")
        self.head = head

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "Aesthetic":
        options = parse_options("aesthetic", arg, ["head", "clip"], positional="head")
        if "head" not in options:
            raise UsageError("reward aesthetic needs head=PATH (the LAION aesthetic predictor's head weights)")
        head = AestheticHead.from_file(options["head"])
        return cls(*cls.load(options.get("clip", DEFAULT_CLIP)), head)

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        embeds = self.image_embeds(images)
        return self.head.to(embeds.device)(embeds)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of token features ``(B, T, C) -> (B, C, C)``, normalised by ``T * C``."""
    b, t, c = features.shape
    return features.transpose(1, 2) @ features / (t * c)


class ClipStyle(_ClipBase):
    def __init__(self, model: Any, processor: Any, reference: torch.Tensor, layers: Sequence[int]):
        super().__init__(model, processor, name="clip-style")
        self.layers = list(layers)
        with torch.no_grad():
            self.target = [g.detach() for g in self.grams(reference)]

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "ClipStyle":
        options = parse_options("clip-style", arg, ["ref", "model", "layers"], positional="ref")
        if "ref" not in options:
            raise UsageError("reward clip-style needs a reference image: clip-style:PATH")
        model, processor = cls.load(options.get("model", DEFAULT_CLIP))
        reference = read_image(options["ref"], channels=3, size=None)[None]
        layers = [int(v) for v in options.get("layers", "4+8").split("+")]
        depth = model.config.vision_config.num_hidden_layers
        if not all(0 <= layer <= depth for layer in layers):
            raise UsageError(f"reward clip-style: layers must be in 0..{depth}, got {layers}")
        return cls(model, processor, reference, layers)

    def grams(self, images: torch.Tensor) -> list[torch.Tensor]:
        check_images(images, self.name)
        pixels = self.preprocess(images.to(self.device))
        hidden = self.model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        return [gram(hidden[layer].float()) for layer in self.layers]

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        loss = sum((g - t.to(g.device)).square().flatten(1).sum(1) for g, t in zip(self.grams(images), self.target))
        return -loss / math.sqrt(len(self.layers))
