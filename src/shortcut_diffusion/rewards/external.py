"""Rewards defined by other packages or by the user's own file.

- ``hpsv2[:VERSION,checkpoint=PATH]``: Human Preference Score v2 (v2.0 or v2.1, default) through
  the ``hpsv2`` package's open_clip ViT-H-14 with the published HPS weights (``xswu/HPSv2`` on the
  hub, or a local checkpoint). Install: ``pip install hpsv2`` (it brings torchvision; install one
  built for your torch).
- ``imagereward``: ImageReward through the ``image-reward`` package (BLIP with the published
  head). Install: ``pip install image-reward``.
- ``PATH.py:NAME``: ``NAME`` from a Python file: a callable ``reward(images, prompts)`` or a class
  or factory taking no arguments that returns one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .clip import ClipPreprocess
from .spec import check_images, parse_options

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _require(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"this reward needs the {install} package: pip install {install}") from None


class HPSv2:
    """HPS v2: ``logit_scale``-free cosine of the open_clip ViT-H-14 image and text embeddings, with
    the HPS fine-tuned weights, on 224 x 224 images normalised with OpenAI's CLIP statistics."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.preprocess = ClipPreprocess(224, (224, 224), OPENAI_MEAN, OPENAI_STD)

    CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "HPSv2":
        options = parse_options("hpsv2", arg, ["version", "checkpoint"], positional="version")
        version = options.get("version", "v2.1")
        if version not in cls.CHECKPOINTS:
            raise UsageError(f"reward hpsv2: version must be one of {', '.join(cls.CHECKPOINTS)}, got {version!r}")
        _require("hpsv2", "hpsv2")
        from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer  # type: ignore[import-not-found]

        checkpoint = options.get("checkpoint")
        if checkpoint is None:  # the published weights, through the hub cache (HF_HUB_OFFLINE respected)
            from huggingface_hub import hf_hub_download

            try:
                checkpoint = hf_hub_download("xswu/HPSv2", cls.CHECKPOINTS[version])
            except Exception as error:
                raise UsageError(f"HPS {version} weights are not available ({error}); pass checkpoint=PATH") from error
        if not Path(checkpoint).is_file():
            raise UsageError(f"HPS checkpoint not found at {checkpoint}")
        model, _, _ = create_model_and_transforms("ViT-H-14", "laion2B-s32B-b79K", precision="fp32", device="cpu",
                                                  jit=False, output_dict=True)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
        return cls(model, get_tokenizer("ViT-H-14"))

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        check_images(images, "hpsv2")
        device = next(self.model.parameters()).device
        image = F.normalize(self.model.encode_image(self.preprocess(images.to(device))).float(), dim=-1)
        text = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(device)).float(), dim=-1)
        return (image * text).sum(-1)


class ImageReward:
    """ImageReward's score (BLIP + MLP head), differentiable through its ``score_gard`` path."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)
        self.preprocess = ClipPreprocess(224, (224, 224), OPENAI_MEAN, OPENAI_STD)

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "ImageReward":
        reward_module = _require("ImageReward", "image-reward")
        return cls(reward_module.load(arg or "ImageReward-v1.0"))

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        check_images(images, "imagereward")
        device = next(self.model.parameters()).device
        tokens = self.model.blip.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35,
                                           return_tensors="pt").to(device)
        return self.model.score_gard(tokens.input_ids, tokens.attention_mask,
                                     self.preprocess(images.to(device))).flatten()


def load_user_reward(spec: str):
    """``PATH.py:NAME`` -> the reward it defines."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"reward file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"sdo_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: report what failed
        raise UsageError(f"could not import {path}: {type(error).__name__}: {error}") from error
    if not hasattr(module, name):
        raise UsageError(f"{path} defines no {name!r}")
    obj = getattr(module, name)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise UsageError(f"{path}:{name} is not callable")
    return obj
