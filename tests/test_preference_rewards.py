"""HPS v2 and ImageReward through transformers, against their authors' own code.

``tests/data/*_tiny.safetensors`` hold tiny random models in the published checkpoints' layouts and
what the authors' code (the ``hpsv2`` and ``image-reward`` packages) computes with them: the
preprocessed images, the tokens and the scores (``tests/data/make_reward_references.py`` regenerates
them). Here the same weights go through our conversion and must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from shortcut_diffusion import UsageError
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.rewards.hps import HPSv2
from shortcut_diffusion.rewards.openclip import open_clip_to_transformers
from shortcut_diffusion.rewards.imagereward import ImageReward, blip_tokenizer, imagereward_to_transformers

import tiny_pipelines

DATA = Path(__file__).parent / "data"


def fixture(name: str):
    with safe_open(DATA / f"{name}_tiny.safetensors", "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    images = tensors["images"].permute(0, 3, 1, 2).float() / 255 * 2 - 1  # uint8 HWC -> [-1, 1] NCHW
    return state, tensors, images, json.loads(meta["prompts"]), meta


class FixedTokens:
    """The reference tokenizer's output for the fixture's prompts (open_clip's BPE vocabulary is
    not available offline; transformers' CLIPTokenizer reproduces it for users)."""

    def __init__(self, prompts, tokens):
        self.rows = {p: t for p, t in zip(prompts, tokens)}

    def __call__(self, prompts, **kwargs):
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": torch.stack([self.rows[p] for p in prompts])})


def test_hpsv2_conversion_gives_the_reference_scores():
    state, ref, images, prompts, _ = fixture("hpsv2")
    model = open_clip_to_transformers(state, vision_heads=2, text_heads=2)
    reward = HPSv2(model, FixedTokens(prompts, ref["tokens"]))
    # the model alone, on the reference's preprocessed pixels
    image = torch.nn.functional.normalize(model.get_image_features(pixel_values=ref["pixels"].float()).pooler_output, dim=-1)
    torch.testing.assert_close((image * reward.text_embeds(prompts)).sum(-1), ref["scores"], atol=1e-5, rtol=0)
    # HPS's preprocess_val (tensor resize, torchvision centre crop with an odd margin) redone in torch
    torch.testing.assert_close(reward.preprocess(images), ref["pixels"].float(), atol=2e-3, rtol=0)
    # end to end, differentiable
    x = images.clone().requires_grad_(True)
    scores = reward(x, prompts)
    torch.testing.assert_close(scores, ref["scores"], atol=1e-3, rtol=0)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_hpsv2_by_name_reads_the_published_checkpoint_layout(tmp_path, pipeline_dirs):
    state, ref, images, prompts, _ = fixture("hpsv2")
    checkpoint = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)  # DDP prefix, as saved
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_pipelines.clip_tokenizer(tokenizer_dir).save_pretrained(tokenizer_dir)
    reward = get_reward(f"hpsv2:v2.1,checkpoint={checkpoint},tokenizer={tokenizer_dir}")
    assert reward.model.config.vision_config.num_attention_heads == 16  # ViT-H-14's; the tiny test model has 2
    direct = open_clip_to_transformers(state, vision_heads=2, text_heads=2).state_dict()
    loaded = reward.model.state_dict()
    assert loaded.keys() == direct.keys() and all(torch.equal(loaded[k], direct[k]) for k in direct)
    x = images.clone().requires_grad_(True)
    value = reward(x, prompts)
    assert value.shape == (2,) and torch.isfinite(value).all()
    with pytest.raises(UsageError, match="version must be one of"):
        get_reward("hpsv2:v3")


def imagereward_model():
    state, ref, images, prompts, meta = fixture("imagereward")
    return imagereward_to_transformers(state, json.loads(meta["med_config"]), vision_heads=2), ref, images, prompts, meta


def vocab_dir(tmp_path, meta) -> Path:
    directory = tmp_path / "bert"
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(json.loads(meta["vocab"])) + "\n")
    return directory


def test_imagereward_conversion_gives_the_reference_scores(tmp_path):
    model, ref, images, prompts, meta = imagereward_model()
    torch.testing.assert_close(model(ref["pixels"].float(), ref["tokens"], ref["attention_mask"]), ref["scores"],
                               atol=1e-4, rtol=0)
    # BLIP's tokenizer recipe ([DEC], [ENC], 35 tokens) on the same WordPiece vocabulary
    reward = ImageReward(model, blip_tokenizer(str(vocab_dir(tmp_path, meta))))
    tokens = reward.tokens(prompts)
    assert torch.equal(tokens["input_ids"], ref["tokens"]) and torch.equal(tokens["attention_mask"], ref["attention_mask"])
    # the package resizes 8-bit PIL images; ours resizes the float images: equal up to that rounding
    diff = (reward.preprocess(images) - ref["pixels"].float()).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15
    x = images.clone().requires_grad_(True)
    scores = reward(x, prompts)
    assert (scores - ref["scores"]).abs().max() < 0.05 * ref["scores"].abs().max()
    (grad,) = torch.autograd.grad(scores.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_imagereward_by_name(tmp_path):
    model, ref, images, prompts, meta = imagereward_model()
    state, *_ = fixture("imagereward")
    checkpoint = tmp_path / "ImageReward.pt"
    torch.save(state, checkpoint)
    med = tmp_path / "med_config.json"
    med.write_text(meta["med_config"])
    reward = get_reward(f"imagereward:checkpoint={checkpoint},med_config={med},tokenizer={vocab_dir(tmp_path, meta)}")
    # 32-wide tiny encoder: one head by the width / 64 rule, where the reference used 2; the weights are the same
    loaded, direct = reward.model.state_dict(), model.state_dict()
    assert loaded.keys() == direct.keys() and all(torch.equal(loaded[k], direct[k]) for k in direct)
    value = reward(images, prompts)
    assert value.shape == (2,) and torch.isfinite(value).all()
    with pytest.raises(UsageError, match="needs the prompt"):
        reward(images, None)


def test_preference_rewards_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("hpsv2", "imagereward"):
        with pytest.raises(UsageError, match="checkpoint=PATH"):
            get_reward(spec)
    with pytest.raises(UsageError, match="checkpoint not found"):
        get_reward(f"hpsv2:checkpoint={tmp_path / 'nothing.pt'}")
    state, *_ = fixture("hpsv2")
    wrong = tmp_path / "ImageReward.pt"
    torch.save(state, wrong)
    with pytest.raises(UsageError, match="not an ImageReward checkpoint"):
        get_reward(f"imagereward:checkpoint={wrong}")


def test_preference_rewards_by_name_from_sdo_latent_and_finetune(pipeline_dirs, tmp_path):
    """Both rewards, weighted, with options of their own (terms separated by ';'), on a tiny SD pipeline."""
    from shortcut_diffusion.cli import main

    hps_state, *_ = fixture("hpsv2")
    ir_state, _, _, _, meta = fixture("imagereward")
    torch.save({"state_dict": hps_state}, tmp_path / "hps.pt")
    torch.save(ir_state, tmp_path / "ir.pt")
    (tmp_path / "med.json").write_text(meta["med_config"])
    clip_tok = tmp_path / "clip-tok"
    tiny_pipelines.clip_tokenizer(clip_tok).save_pretrained(clip_tok)
    spec = (f"hpsv2:checkpoint={tmp_path / 'hps.pt'},tokenizer={clip_tok}=1;"
            f"imagereward:checkpoint={tmp_path / 'ir.pt'},med_config={tmp_path / 'med.json'},"
            f"tokenizer={vocab_dir(tmp_path, meta)}=0.1;normalize=running")
    common = ["--model", str(pipeline_dirs["sd"]), "--reward", spec, "--steps", "3", "--batch", "2", "--height", "16",
              "--width", "16", "--device", "cpu", "--no-progress"]
    assert main(["latent", *common, "--prompt", "a red cube", "--iters", "2", "--out", str(tmp_path / "latent")]) == 0
    history = json.loads((tmp_path / "latent" / "summary.json").read_text())
    assert history["prompts"] == ["a red cube"] * 2
    assert main(["finetune", *common, "--prompt", "a red cube", "a blue cat", "--max-steps", "2", "--eval-every", "0",
                 "--eval-per-class", "1", "--checkpoint-every", "0", "--out", str(tmp_path / "ft")]) == 0
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["before"]["reward"] != summary["after"]["reward"]


def open_clip_dir(tmp_path, state, **model_cfg_overrides) -> Path:
    from safetensors.torch import save_file

    directory = tmp_path / "open_clip"
    directory.mkdir(exist_ok=True)
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2}}
    model_cfg.update(model_cfg_overrides)
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "open_clip_model.safetensors")
    return directory


def test_clip_loads_an_open_clip_model_directory(tmp_path):
    """The HPS fixture is an open_clip ViT CLIP: as `clip:DIR` it gives the HPS reference scores
    (HPS v2 is a CLIP score), with heads and preprocessing read from open_clip_config.json."""
    state, ref, images, prompts, _ = fixture("hpsv2")
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_pipelines.clip_tokenizer(tokenizer_dir).save_pretrained(tokenizer_dir)
    reward = get_reward(f"clip:{open_clip_dir(tmp_path, state)},tokenizer={tokenizer_dir}")
    assert reward.model.config.vision_config.num_attention_heads == 2
    reward.tokenizer = FixedTokens(prompts, ref["tokens"])  # open_clip's BPE vocabulary is not available offline
    torch.testing.assert_close(reward(images, prompts), ref["scores"], atol=1e-3, rtol=0)


def test_open_clip_variants_that_compute_something_else_are_refused(tmp_path):
    state, *_ = fixture("hpsv2")
    layer_scale = dict(state, **{"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)})
    with pytest.raises(UsageError, match="LayerScale"):
        open_clip_to_transformers(layer_scale, 2, 2)
    directory = open_clip_dir(tmp_path, state, vision_cfg={"timm_model_name": "convnext_base"})
    with pytest.raises(UsageError, match="timm_model_name"):
        get_reward(f"clip:{directory},tokenizer=unused")
