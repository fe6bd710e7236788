"""``hpsv2``: Human Preference Score v2 (Wu et al., 2023, arXiv 2306.09341) through transformers.

HPS v2 is open_clip's ViT-H-14 fine-tuned on human preferences; its score is the cosine between
the image and prompt embeddings (``image_features @ text_features.T`` of unit vectors, without the
logit scale). The published checkpoints (``xswu/HPSv2``: ``HPS_v2_compressed.pt`` for v2.0,
``HPS_v2.1_compressed.pt`` for v2.1) are open_clip state dicts; :func:`open_clip_to_transformers`
renames them onto a transformers ``CLIPModel`` (same computation: pre-norm blocks with exact GELU,
class-token pooling, end-of-text pooling), so neither the ``hpsv2`` package nor open_clip nor
torchvision is needed. The tokenizer is transformers' CLIPTokenizer of the same ViT-H-14
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), which reproduces open_clip's.

Preprocessing is HPS's ``preprocess_val`` in torch: resize the shortest edge to 224 (bicubic,
antialiased), torchvision's centre crop, OpenAI CLIP mean and std.

``hpsv2[:VERSION][,checkpoint=PATH][,tokenizer=DIR_OR_ID]``; VERSION is ``v2.0`` or ``v2.1``
(default).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from .clip import ClipPreprocess, ClipScore, _load
from .spec import parse_options
from .weights import build_loaded, checkpoint_file, count_blocks, read_state_dict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
REPO = "xswu/HPSv2"
TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _block(src: str, dst: str, state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """One open_clip residual block (fused in-projection) into a transformers CLIP encoder layer."""
    q, k, v = state[f"{src}attn.in_proj_weight"].chunk(3)
    qb, kb, vb = state[f"{src}attn.in_proj_bias"].chunk(3)
    for name, weight, bias in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
        out[f"{dst}self_attn.{name}.weight"], out[f"{dst}self_attn.{name}.bias"] = weight, bias
    for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
        for p in ("weight", "bias"):
            out[f"{dst}{ours}.{p}"] = state[f"{src}{theirs}.{p}"]


def open_clip_to_transformers(state: dict[str, torch.Tensor], vision_heads: int = 16, text_heads: int = 16) -> Any:
    """A transformers ``CLIPModel`` holding an open_clip ViT CLIP state dict (OpenAI layout:
    ``visual.conv1``, ``visual.transformer.resblocks.*``, ``transformer.resblocks.*``, ...).
    The head counts are not in the weights; ViT-H-14 has 16 and 16."""
    from transformers import CLIPConfig, CLIPModel

    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        raise UsageError("not an open_clip ViT CLIP checkpoint (no visual.conv1 / token_embedding weights)")
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vocab, text_width = state["token_embedding.weight"].shape
    config = CLIPConfig(
        vision_config=dict(hidden_size=width, intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=count_blocks(state, "visual.transformer.resblocks."),
                           num_attention_heads=vision_heads, patch_size=patch, image_size=grid * patch, hidden_act="gelu"),
        text_config=dict(hidden_size=text_width, intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                         num_hidden_layers=count_blocks(state, "transformer.resblocks."), num_attention_heads=text_heads,
                         vocab_size=vocab, max_position_embeddings=state["positional_embedding"].shape[0],
                         hidden_act="gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0),
        projection_dim=state["text_projection"].shape[1])
    out = {
        "vision_model.embeddings.patch_embedding.weight": conv,
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for ours, theirs in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                         ("text_model.final_layer_norm", "ln_final")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"{theirs}.{p}"]
    for i in range(config.vision_config.num_hidden_layers):
        _block(f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", state, out)
    for i in range(config.text_config.num_hidden_layers):
        _block(f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", state, out)
    return build_loaded(lambda: CLIPModel(config), out, "open_clip")


class HPSv2(ClipScore):
    """HPS v2 score: a CLIP score (cosine of the image and prompt embeddings, about 0.2-0.3 on real
    images) with the HPS weights and HPS's preprocessing."""

    def __init__(self, model: Any, tokenizer: Any):
        preprocess = ClipPreprocess(224, (224, 224), OPENAI_MEAN, OPENAI_STD, crop_offset="round")
        super().__init__(model, tokenizer, name="hpsv2", preprocess=preprocess)

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "HPSv2":
        options = parse_options("hpsv2", arg, ["version", "checkpoint", "tokenizer"], positional="version")
        version = options.get("version", "v2.1")
        if version not in CHECKPOINTS:
            raise UsageError(f"reward hpsv2: version must be one of {', '.join(CHECKPOINTS)}, got {version!r}")
        file = checkpoint_file(options.get("checkpoint"), REPO, CHECKPOINTS[version], f"HPS {version}")
        model = open_clip_to_transformers(read_state_dict(file, "state_dict"))
        return cls(model, _load("CLIPTokenizer", options.get("tokenizer", TOKENIZER), "CLIP tokenizer"))
