"""Regenerate the reference fixtures of the ``hpsv2`` and ``imagereward`` rewards.

The published rewards run on their authors' own code: HPS v2 on the open_clip copy inside the
``hpsv2`` package, ImageReward on the BLIP code inside ``image-reward``. Our rewards run the same
weights through transformers' ``CLIPModel`` and ``BlipVisionModel``/``BlipTextModel`` instead
(those packages pin old dependencies and need torchvision). This script builds TINY randomly
initialised models with the authors' own classes, computes their scores and preprocessing with
the authors' own code, and saves everything the tests need to check that our conversion gives the
same numbers:

- ``hpsv2_tiny.safetensors``: an open_clip CLIP state dict (the layout of the HPS checkpoints),
  two RGB images (uint8), the tokens of two prompts from open_clip's tokenizer, the images after
  HPS's ``preprocess_val`` and the HPS scores (``image_features @ text_features.T``, diagonal);
- ``imagereward_tiny.safetensors``: an ImageReward state dict (``blip.visual_encoder.*``,
  ``blip.text_encoder.*``, ``mlp.*``), the same images, a WordPiece vocabulary, the tokens from
  BLIP's ``init_tokenizer`` recipe, the images after ImageReward's PIL preprocessing and the
  scores of ``ImageReward.score_gard``.

Weights are rounded to float16 before the references are computed, and stored in float16.

Environment (only to regenerate; the tests need none of it)::

    python -m venv refenv
    refenv/bin/pip install torch torchvision "transformers<4.45" timm fairscale ftfy regex \
        safetensors pillow requests clint
    refenv/bin/pip install --no-deps hpsv2==1.2.0 image-reward==1.5
    # hpsv2 1.2.0's wheel lacks open_clip's BPE file: copy bpe_simple_vocab_16e6.txt.gz from
    # open_clip_torch or clip-anytorch into hpsv2/src/open_clip/
    refenv/bin/python tests/data/make_reward_references.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).parent
PROMPTS = ["a red cube on a table", "an astronaut riding a horse, oil painting"]
WORDS = ("a an the red blue cube table on in of astronaut riding horse oil painting photo cat dog "
         "##s ##ing , . !").split()


def images() -> np.ndarray:
    """Two smooth RGB images of 64 x 65 (resized to 224 x 227 then centre-cropped: an odd margin)."""
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:64, 0:65] / 64.0
    out = []
    for k in range(2):
        channels = [np.sin(2 * np.pi * (rng.rand() * 3 * x + rng.rand() * 2 * y) + rng.rand() * 6) for _ in range(3)]
        img = (np.stack(channels, -1) * 0.45 + 0.5 + rng.randn(64, 65, 3) * 0.05).clip(0, 1)
        out.append((img * 255).round().astype(np.uint8))
    return np.stack(out)


def perturb_and_round(module: torch.nn.Module, seed: int, scale2d: float = 0.02) -> dict[str, torch.Tensor]:
    """Move every parameter off its initial value (norms not 1, biases not 0) so that a wrong
    mapping changes the output, then round to float16 (stored) and load that back."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.2 if p.dim() == 1 else scale2d
            p.add_(torch.randn(p.shape, generator=g) * scale)
            p.copy_(p.half().float())
    return {k: v.detach().half().contiguous() for k, v in module.state_dict().items() if v.is_floating_point()}


def hpsv2_reference(pictures: np.ndarray) -> None:
    from hpsv2.src.open_clip import get_tokenizer
    from hpsv2.src.open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from hpsv2.src.open_clip.transform import image_transform

    torch.manual_seed(0)
    config = {"embed_dim": 16, "vision_heads": 2, "text_heads": 2}
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=32, image_size=224),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=16, heads=2, layers=2),
                 output_dict=True).eval()
    state = perturb_and_round(model, 1)
    # HPS's preprocess_val: what create_model_and_transforms builds for this image size
    preprocess = image_transform(224, is_train=False)
    pixels = torch.stack([preprocess(Image.fromarray(p)) for p in pictures]).half().float()
    tokens = get_tokenizer("ViT-H-14")(PROMPTS)
    with torch.no_grad():
        out = model(pixels, tokens)
        scores = torch.diagonal(out["image_features"] @ out["text_features"].T)
    tensors = {f"model.{k}": v for k, v in state.items()}
    tensors.update(images=torch.from_numpy(pictures).contiguous(), tokens=tokens.contiguous(),
                   pixels=pixels.half().contiguous(), scores=scores.contiguous())
    save_file(tensors, HERE / "hpsv2_tiny.safetensors",
              metadata={"config": json.dumps(config), "prompts": json.dumps(PROMPTS)})
    print("hpsv2 scores", scores.tolist())


def imagereward_reference(pictures: np.ndarray) -> None:
    # import ImageReward's modules without its package __init__ (which imports diffusers and
    # accelerate for ReFL training)
    spec = importlib.util.find_spec("ImageReward")
    package = types.ModuleType("ImageReward")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["ImageReward"] = package
    from transformers import BertTokenizer

    from ImageReward.ImageReward import MLP, ImageReward, _transform
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(Path(tmp) / "vocab.txt"))
    # BLIP's init_tokenizer recipe
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})

    torch.manual_seed(0)
    med = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
           "vocab_size": len(tokenizer), "max_position_embeddings": 64, "layer_norm_eps": 1e-12,
           "hidden_act": "gelu", "add_cross_attention": True, "encoder_width": 32,
           "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0}
    config = BertConfig(**med)
    model = ImageReward.__new__(ImageReward)
    torch.nn.Module.__init__(model)
    model.device = "cpu"
    model.blip = torch.nn.Module()
    model.blip.visual_encoder = VisionTransformer(img_size=224, patch_size=32, embed_dim=32, depth=2, num_heads=2)
    model.blip.text_encoder = BertModel(config=config, add_pooling_layer=False)
    model.mlp = MLP(16)
    model.mean, model.std = 0.16717362830052426, 1.0333394966054072
    model.eval()
    state = perturb_and_round(model, 2, scale2d=0.2)

    pixels = torch.stack([_transform(224)(Image.fromarray(p)) for p in pictures]).half().float()
    text = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        scores = model.score_gard(text.input_ids, text.attention_mask, pixels).flatten()
    tensors = {f"model.{k}": v for k, v in state.items()}
    tensors.update(images=torch.from_numpy(pictures).contiguous(), tokens=text.input_ids.contiguous(),
                   attention_mask=text.attention_mask.contiguous(), pixels=pixels.half().contiguous(),
                   scores=scores.contiguous())
    save_file(tensors, HERE / "imagereward_tiny.safetensors",
              metadata={"med_config": json.dumps(med), "vision_heads": "2", "vocab": json.dumps(vocab),
                        "prompts": json.dumps(PROMPTS)})
    print("imagereward scores", scores.tolist())


if __name__ == "__main__":
    pictures = images()
    hpsv2_reference(pictures)
    imagereward_reference(pictures)
