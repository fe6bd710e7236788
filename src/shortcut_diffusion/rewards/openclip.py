"""open_clip ViT CLIP checkpoints as transformers ``CLIPModel``s, without open_clip.

open_clip's plain ViT CLIP (OpenAI's layout: ``visual.conv1``, ``visual.transformer.resblocks.*``,
``transformer.resblocks.*``, ``ln_final``, ``text_projection``) computes what transformers'
``CLIPModel`` computes: pre-norm blocks, class-token pooling of the image, end-of-text pooling of
the causal text tower. :func:`open_clip_to_transformers` renames the weights (splitting the fused
attention in-projection). Variants that compute something else (timm or Hugging Face towers,
LayerScale, attentional or average pooling) leave weights unused or missing and are refused.

:func:`load_open_clip` reads an open_clip model directory or hub repository
(``open_clip_config.json`` + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``,
the layout of open_clip's ``hf-hub:`` models) with its preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.weights import build_loaded, count_blocks, hub_offline, read_state_dict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image statistics, open_clip's default
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG = "open_clip_config.json"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
IGNORED = ("attn_mask",)  # buffers open_clip saves that transformers rebuilds


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


def open_clip_to_transformers(state: dict[str, torch.Tensor], vision_heads: int = 16, text_heads: int = 16,
                              hidden_act: str = "gelu") -> Any:
    """A transformers ``CLIPModel`` holding an open_clip ViT CLIP state dict. The head counts and
    the activation are not in the weights: ViT-H-14 (HPS v2) has 16, 16 and exact GELU; OpenAI's
    models use ``quick_gelu``."""
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
                           num_attention_heads=vision_heads, patch_size=patch, image_size=grid * patch, hidden_act=hidden_act),
        text_config=dict(hidden_size=text_width, intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                         num_hidden_layers=count_blocks(state, "transformer.resblocks."), num_attention_heads=text_heads,
                         vocab_size=vocab, max_position_embeddings=state["positional_embedding"].shape[0],
                         hidden_act=hidden_act, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0),
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
    used = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale"}
    for ours, theirs in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                         ("text_model.final_layer_norm", "ln_final")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"{theirs}.{p}"]
            used.add(f"{theirs}.{p}")
    try:
        for i in range(config.vision_config.num_hidden_layers):
            _block(f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", state, out)
        for i in range(config.text_config.num_hidden_layers):
            _block(f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", state, out)
    except KeyError as error:
        raise UsageError(f"not a plain open_clip ViT CLIP: no {error.args[0]}") from None
    used |= {k for k in state if k.startswith(("visual.transformer.resblocks.", "transformer.resblocks."))
             and k.split(".")[-2] in ("attn", "out_proj", "ln_1", "ln_2", "c_fc", "c_proj")}
    unused = sorted(k for k in state if k not in used and not k.endswith(IGNORED))
    if unused:
        raise UsageError(f"this open_clip model has weights a plain ViT CLIP does not use, e.g. {unused[:3]} "
                         "(LayerScale, attentional pooling, timm or Hugging Face towers are not supported)")
    return build_loaded(lambda: CLIPModel(config), out, "open_clip")


def _fetch(source: str, name: str) -> "Path | None":
    local = Path(source) / name
    if Path(source).is_dir():
        return local if local.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, name, local_files_only=hub_offline()))
    except Exception:
        return None


def is_open_clip(source: str) -> bool:
    """``source`` (directory or hub id) is an open_clip model without a transformers ``config.json``."""
    if Path(source).is_dir():
        return (Path(source) / CONFIG).is_file() and not (Path(source) / "config.json").is_file()
    return _fetch(source, CONFIG) is not None


def load_open_clip(source: str) -> tuple[Any, dict[str, Any]]:
    """``(CLIPModel, preprocessing)`` of an open_clip model directory or hub repository;
    preprocessing has ``size``, ``mean`` and ``std``."""
    config_file = _fetch(source, CONFIG)
    if config_file is None:
        raise UsageError(f"no {CONFIG} in {source!r}")
    config = json.loads(config_file.read_text())
    model_cfg, pre = config.get("model_cfg", config), config.get("preprocess_cfg", {})
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    for key, cfg in (("timm_model_name", vision), ("hf_model_name", text)):
        if cfg.get(key):
            raise UsageError(f"open_clip model {source!r} uses {key}={cfg[key]!r}; only plain ViT CLIP models load")
    if pre.get("resize_mode", "shortest") != "shortest":
        raise UsageError(f"open_clip resize_mode {pre['resize_mode']!r} is not supported (only 'shortest')")
    weights = next((f for f in (_fetch(source, name) for name in WEIGHTS) if f is not None), None)
    if weights is None:
        raise UsageError(f"no open_clip weights ({' or '.join(WEIGHTS)}) in {source!r}")
    model = open_clip_to_transformers(
        read_state_dict(weights, "state_dict"), vision_heads=vision.get("width", 768) // vision.get("head_width", 64),
        text_heads=text.get("heads", 8), hidden_act="quick_gelu" if model_cfg.get("quick_gelu") else "gelu")
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return model, {"size": int(size), "mean": pre.get("mean", OPENAI_MEAN), "std": pre.get("std", OPENAI_STD)}
