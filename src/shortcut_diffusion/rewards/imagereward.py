"""``imagereward``: ImageReward (Xu et al., 2023, arXiv 2304.05977) through transformers.

ImageReward is BLIP (ViT-L/16 image encoder; a BERT text encoder with cross-attention to the image
tokens) and an MLP on the text encoder's first token, standardised with the training set's mean and
std. The published checkpoint (``THUDM/ImageReward``: ``ImageReward.pt``) is a state dict of that
code; :func:`imagereward_to_transformers` renames it onto transformers' ``BlipVisionModel`` and
``BlipTextModel`` (the same computation; BLIP's text encoder was ported to transformers with its
module names), so neither the ``image-reward`` package (which pins old timm and transformers) nor
torchvision is needed. Gradients flow to the pixels, as in the package's ``score_gard``.

Tokenizer: BLIP's recipe (``bert-base-uncased`` with ``[DEC]`` as beginning-of-sentence and
``[ENC]`` added), padded to 35 tokens. Preprocessing: shortest edge to 224 (bicubic, antialiased),
torchvision's centre crop, OpenAI CLIP mean and std; the package resizes 8-bit PIL images, so
scores differ from it by that quantisation only.

``imagereward[:checkpoint=PATH][,med_config=PATH][,tokenizer=DIR_OR_ID]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.clip import ClipPreprocess, _load
from shortcut_diffusion.rewards.spec import check_images, parse_options
from shortcut_diffusion.rewards.weights import build_loaded, checkpoint_file, count_blocks, read_state_dict

REPO = "THUDM/ImageReward"
TOKENIZER = "bert-base-uncased"
MAX_LENGTH = 35
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the published standardisation of the head's output
HEAD_LAYERS = (0, 2, 4, 6, 7)  # the Linear layers of the head; dropouts in between


class ImageRewardNet(nn.Module):
    """BLIP image encoder -> text encoder cross-attending to it -> MLP on the first text token."""

    def __init__(self, vision_config: Any, text_config: Any, head_dims: Sequence[int]):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        d = list(head_dims)
        self.mlp = nn.Sequential(nn.Linear(d[0], d[1]), nn.Dropout(0.2), nn.Linear(d[1], d[2]), nn.Dropout(0.2),
                                 nn.Linear(d[2], d[3]), nn.Dropout(0.1), nn.Linear(d[3], d[4]), nn.Linear(d[4], d[5]))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=image_mask, is_decoder=False).last_hidden_state[:, 0]
        return ((self.mlp(text) - MEAN) / STD).squeeze(-1)


def imagereward_to_transformers(state: dict[str, torch.Tensor], med_config: Optional[dict] = None,
                                vision_heads: Optional[int] = None) -> ImageRewardNet:
    """An :class:`ImageRewardNet` holding an ImageReward state dict. The text encoder's settings
    come from ``med_config`` (the checkpoint's ``med_config.json``) where given, else from the weights
    with BERT's defaults (heads = width / 64); the image encoder has width / 64 heads (ViT-L: 16)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    if "blip.visual_encoder.patch_embed.proj.weight" not in state or "mlp.layers.0.weight" not in state:
        raise UsageError("not an ImageReward checkpoint (no blip.visual_encoder / mlp weights)")
    v = "blip.visual_encoder."
    conv = state[f"{v}patch_embed.proj.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state[f"{v}pos_embed"].shape[1] - 1) ** 0.5)
    vision_config = BlipVisionConfig(hidden_size=width, intermediate_size=state[f"{v}blocks.0.mlp.fc1.weight"].shape[0],
                                     num_hidden_layers=count_blocks(state, f"{v}blocks."),
                                     num_attention_heads=vision_heads or max(1, width // 64), image_size=grid * patch,
                                     patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu")
    t = "blip.text_encoder."
    vocab, hidden = state[f"{t}embeddings.word_embeddings.weight"].shape
    med = dict(med_config or {})
    text_config = BlipTextConfig(
        vocab_size=vocab, hidden_size=hidden, encoder_hidden_size=width,
        intermediate_size=state[f"{t}encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=count_blocks(state, f"{t}encoder.layer."),
        num_attention_heads=int(med.get("num_attention_heads", hidden // 64)),
        max_position_embeddings=state[f"{t}embeddings.position_embeddings.weight"].shape[0],
        layer_norm_eps=float(med.get("layer_norm_eps", 1e-12)), hidden_act=med.get("hidden_act", "gelu"),
        pad_token_id=int(med.get("pad_token_id", 0)), is_decoder=True)

    out = {
        "vision.embeddings.class_embedding": state[f"{v}cls_token"],
        "vision.embeddings.position_embedding": state[f"{v}pos_embed"],
        "vision.embeddings.patch_embedding.weight": conv,
        "vision.embeddings.patch_embedding.bias": state[f"{v}patch_embed.proj.bias"],
    }
    for p in ("weight", "bias"):
        out[f"vision.post_layernorm.{p}"] = state[f"{v}norm.{p}"]
        for i in range(vision_config.num_hidden_layers):
            for ours, theirs in (("self_attn.qkv", "attn.qkv"), ("self_attn.projection", "attn.proj"),
                                 ("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"),
                                 ("mlp.fc2", "mlp.fc2")):
                out[f"vision.encoder.layers.{i}.{ours}.{p}"] = state[f"{v}blocks.{i}.{theirs}.{p}"]
        for layer in HEAD_LAYERS:
            out[f"mlp.{layer}.{p}"] = state[f"mlp.layers.{layer}.{p}"]
    out.update({f"text.{k.removeprefix(t)}": w for k, w in state.items() if k.startswith(t)})
    head_dims = [state["mlp.layers.0.weight"].shape[1]] + [state[f"mlp.layers.{i}.weight"].shape[0] for i in HEAD_LAYERS]
    if head_dims[0] != hidden:
        raise UsageError(f"ImageReward head takes {head_dims[0]} features, the text encoder gives {hidden}")
    return build_loaded(lambda: ImageRewardNet(vision_config, text_config, head_dims), out, "ImageReward")


def blip_tokenizer(source: str = TOKENIZER) -> Any:
    """BLIP's tokenizer: BERT's WordPiece with ``[DEC]`` as beginning-of-sentence and ``[ENC]``."""
    tokenizer = _load("BertTokenizer", source, "BERT tokenizer")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward:
    """ImageReward's standardised score (about -2 to 2 on real images; higher is better)."""

    def __init__(self, model: ImageRewardNet, tokenizer: Any):
        vocab = model.text.config.vocab_size
        if len(tokenizer) != vocab:
            raise UsageError(f"the tokenizer has {len(tokenizer)} tokens but the ImageReward text encoder {vocab}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = ClipPreprocess.torchvision(224)

    @classmethod
    def from_spec(cls, arg: str = "", **context) -> "ImageReward":
        options = parse_options("imagereward", arg, ["checkpoint", "med_config", "tokenizer"], positional="checkpoint")
        file = checkpoint_file(options.get("checkpoint"), REPO, "ImageReward.pt", "ImageReward")
        med = None
        if "med_config" in options:
            path = Path(options["med_config"])
            if not path.is_file():
                raise UsageError(f"med_config not found at {path}")
            med = json.loads(path.read_text())
        model = imagereward_to_transformers(read_state_dict(file, "state_dict"), med)
        return cls(model, blip_tokenizer(options.get("tokenizer", TOKENIZER)))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "ImageReward":
        self.model.to(device)
        return self

    def tokens(self, prompts: Optional[Sequence[str]]) -> dict[str, torch.Tensor]:
        if prompts is None or not len(prompts) or not isinstance(prompts[0], str):
            raise UsageError("reward imagereward needs the prompt of each sample (a text-to-image model)")
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                              return_tensors="pt")
        return {"input_ids": text.input_ids.to(self.device), "attention_mask": text.attention_mask.to(self.device)}

    def __call__(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        check_images(images, "imagereward")
        pixels = self.preprocess(images.to(self.device))
        return self.model(pixels, **self.tokens(prompts))
