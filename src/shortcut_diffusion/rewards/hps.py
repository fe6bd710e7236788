"""``hpsv2``: Human Preference Score v2 (Wu et al., 2023, arXiv 2306.09341) through transformers.

HPS v2 is open_clip's ViT-H-14 fine-tuned on human preferences; its score is the cosine between
the image and prompt embeddings (``image_features @ text_features.T`` of unit vectors, without the
logit scale). The published checkpoints (``xswu/HPSv2``: ``HPS_v2_compressed.pt`` for v2.0,
``HPS_v2.1_compressed.pt`` for v2.1) are open_clip state dicts;
:func:`.openclip.open_clip_to_transformers` renames them onto a transformers ``CLIPModel``, so
neither the ``hpsv2`` package nor open_clip nor torchvision is needed. The tokenizer is transformers' CLIPTokenizer of the same ViT-H-14
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), which reproduces open_clip's.

Preprocessing is HPS's ``preprocess_val`` in torch: resize the shortest edge to 224 (bicubic,
antialiased), torchvision's centre crop, OpenAI CLIP mean and std.

``hpsv2[:VERSION][,checkpoint=PATH][,tokenizer=DIR_OR_ID]``; VERSION is ``v2.0`` or ``v2.1``
(default).
"""

from __future__ import annotations

from typing import Any

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.clip import ClipPreprocess, ClipScore, _load
from shortcut_diffusion.rewards.openclip import open_clip_to_transformers
from shortcut_diffusion.rewards.spec import parse_options
from shortcut_diffusion.rewards.weights import checkpoint_file, read_state_dict

CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
REPO = "xswu/HPSv2"
TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class HPSv2(ClipScore):
    """HPS v2 score: a CLIP score (cosine of the image and prompt embeddings, about 0.2-0.3 on real
    images) with the HPS weights and HPS's preprocessing."""

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__(model, tokenizer, name="hpsv2", preprocess=ClipPreprocess.torchvision(224))

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "HPSv2":
        options = parse_options("hpsv2", arg, ["version", "checkpoint", "tokenizer"], positional="version")
        version = options.get("version", "v2.1")
        if version not in CHECKPOINTS:
            raise UsageError(f"reward hpsv2: version must be one of {', '.join(CHECKPOINTS)}, got {version!r}")
        file = checkpoint_file(options.get("checkpoint"), REPO, CHECKPOINTS[version], f"HPS {version}")
        model = open_clip_to_transformers(read_state_dict(file, "state_dict"))
        return cls(model, _load("CLIPTokenizer", options.get("tokenizer", TOKENIZER), "CLIP tokenizer"))
