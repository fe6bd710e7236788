"""Tiny randomly initialised diffusers pipelines, built in code and saved with save_pretrained.

No downloads: the tokenizers are made from a small local vocabulary (every byte-level character,
as CLIP's BPE sees it, with no merges; a character-level vocabulary for T5's slot), the models
from tiny configs in the style of diffusers' own pipeline tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sd", "sd-v", "sdxl", "sd3", "flux", "ddpm", "sd-turbo", "flux-schnell")


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def clip_tokenizer(directory: Path, max_length: int = 16):
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=16)


def clip_text(hidden: int = 32, projection: bool = False, vocab: int = 520, **sizes):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sizes = {"intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 16,
             **sizes}
    config = CLIPTextConfig(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1, hidden_size=hidden,
                            layer_norm_eps=1e-5, vocab_size=vocab, projection_dim=hidden, **sizes)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_text():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def tiny_vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=2, sample_size=32, **extra)


def build_sd15_full_size(directory: Path) -> Path:
    """A Stable Diffusion 1.5-sized pipeline with random weights (UNet 0.86 B, the SD VAE, a CLIP
    ViT-L/14-sized text encoder; the tokenizer is the character-level one above, 77 tokens), saved
    to ``directory``: what an iteration costs on the real model, without its weights."""
    import diffusers

    from shortcut_diffusion.models.sd15 import SD15_SCHEDULER, SD15_UNET

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3,
                                  latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
    text = clip_text(hidden=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                     max_position_embeddings=77)
    pipe = diffusers.StableDiffusionPipeline(
        unet=diffusers.UNet2DConditionModel(**SD15_UNET), scheduler=diffusers.DDIMScheduler(**SD15_SCHEDULER), vae=vae,
        text_encoder=text, tokenizer=clip_tokenizer(directory, max_length=77), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory)
    return directory


def build(family: str, directory: Path) -> Path:
    """Build the tiny pipeline of ``family`` and save it to ``directory``."""
    import diffusers

    torch.manual_seed(0)
    tok_dir = directory.parent / f"{directory.name}-tok"
    if family in ("sd", "sd-v", "sd-turbo"):
        unet = diffusers.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                              in_channels=4, out_channels=4, norm_num_groups=4,
                                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                              cross_attention_dim=32, attention_head_dim=2)
        scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                            prediction_type="v_prediction" if family == "sd-v" else "epsilon")
        if family == "sd-turbo":  # SD-Turbo's scheduler: Euler ancestral on trailing timesteps
            scheduler = diffusers.EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                                  beta_schedule="scaled_linear", timestep_spacing="trailing",
                                                                  steps_offset=1)
        pipe = diffusers.StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=tiny_vae(), text_encoder=clip_text(),
                                                 tokenizer=clip_tokenizer(tok_dir), safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    elif family == "sdxl":
        unet = diffusers.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                              in_channels=4, out_channels=4, norm_num_groups=4,
                                              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                              attention_head_dim=(2, 4), use_linear_projection=True,
                                              addition_embed_type="text_time", addition_time_embed_dim=8,
                                              transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
                                              cross_attention_dim=64)
        scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                     timestep_spacing="leading", steps_offset=1)
        tokenizer = clip_tokenizer(tok_dir)
        pipe = diffusers.StableDiffusionXLPipeline(unet=unet, scheduler=scheduler, vae=tiny_vae(),
                                                   text_encoder=clip_text(), text_encoder_2=clip_text(projection=True),
                                                   tokenizer=tokenizer, tokenizer_2=tokenizer)
    elif family == "sd3":
        transformer = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                                      attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                                      joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
        tokenizer = clip_tokenizer(tok_dir)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035),
            text_encoder=clip_text(projection=True), text_encoder_2=clip_text(projection=True), text_encoder_3=t5_text(),
            tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=t5_tokenizer())
    elif family in ("flux", "flux-schnell"):  # schnell: no guidance input, no dynamic shift (few steps)
        schnell = family == "flux-schnell"
        transformer = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                       pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                                       guidance_embeds=not schnell)
        scheduler = (diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False) if schnell else
                     diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                               max_image_seq_len=4096, base_shift=0.5, max_shift=1.15))
        pipe = diffusers.FluxPipeline(transformer=transformer, scheduler=scheduler,
                                      vae=tiny_vae(latent_channels=4, shift_factor=0.0609, scaling_factor=1.5035),
                                      text_encoder=clip_text(projection=False), text_encoder_2=t5_text(),
                                      tokenizer=clip_tokenizer(tok_dir), tokenizer_2=t5_tokenizer())
    elif family == "ddpm":
        unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                     layers_per_block=1, norm_num_groups=4,
                                     down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=False))
    else:
        raise ValueError(family)
    pipe.save_pretrained(directory)
    return directory


VIDEO_FAMILIES = ("wan", "cogvideox", "ltx", "animatediff", "hunyuanvideo")
"""Tiny text-to-video pipelines (built by :func:`build_video`): 16 x 16 pixels, 9 frames."""

I2V_FAMILIES = ("wan-i2v", "cogvideox-i2v")
"""Tiny image-to-video pipelines (built by :func:`build_video`)."""


def build_video(family: str, directory: Path) -> Path:
    """Build the tiny video pipeline of ``family`` and save it to ``directory``."""
    import diffusers

    torch.manual_seed(0)
    tok_dir = directory.parent / f"{directory.name}-tok"
    if family in ("wan", "wan-i2v"):  # image-to-video: mask (4) and image latents (4) on the channels, CLIP images
        i2v = family == "wan-i2v"
        vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                         temperal_downsample=[False, True, True],
                                         latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 2.0, 0.8, 1.1])
        image = {"image_dim": 32, "added_kv_proj_dim": 16} if i2v else {}
        transformer = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                                      in_channels=12 if i2v else 4, out_channels=4, text_dim=32,
                                                      freq_dim=16, ffn_dim=32, num_layers=1, cross_attn_norm=True,
                                                      qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **image)
        parts = {"tokenizer": t5_tokenizer(), "text_encoder": _umt5_text(), "vae": vae, "transformer": transformer,
                 "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)}
        pipe = (diffusers.WanImageToVideoPipeline(**parts, **_clip_image_encoder()) if i2v
                else diffusers.WanPipeline(**parts))
    elif family in ("cogvideox", "cogvideox-i2v"):  # image-to-video: the image latents on the channels
        i2v = family == "cogvideox-i2v"
        transformer = diffusers.CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16,
                                                            in_channels=8 if i2v else 4, out_channels=4,
                                                            time_embed_dim=2, text_embed_dim=32,
                                                            num_layers=1, sample_width=2, sample_height=2, sample_frames=5,
                                                            patch_size=2, temporal_compression_ratio=4,
                                                            max_text_seq_length=16, use_rotary_positional_embeddings=True)
        vae = diffusers.AutoencoderKLCogVideoX(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                               down_block_types=("CogVideoXDownBlock3D",) * 4,
                                               up_block_types=("CogVideoXUpBlock3D",) * 4,
                                               block_out_channels=(8, 8, 8, 8), norm_num_groups=2,
                                               temporal_compression_ratio=4)
        scheduler = diffusers.CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                                     timestep_spacing="trailing", clip_sample=False,
                                                     set_alpha_to_one=True, snr_shift_scale=3.0)
        cls = diffusers.CogVideoXImageToVideoPipeline if i2v else diffusers.CogVideoXPipeline
        pipe = cls(tokenizer=t5_tokenizer(), text_encoder=t5_text(), vae=vae, transformer=transformer, scheduler=scheduler)
    elif family == "hunyuanvideo":
        # a Llama prompt encoder and CLIP's pooled embedding. The pipeline crops its prompt template's first 95
        # tokens; with this character-level tokenizer what remains of max_sequence_length is still template, so
        # the prompt reaches the network through CLIP (its end-of-text id is the tokenizer's: 514 tokens)
        transformer = diffusers.HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                               attention_head_dim=8, num_layers=1, num_single_layers=1,
                                                               num_refiner_layers=1, patch_size=1, patch_size_t=1,
                                                               text_embed_dim=16, pooled_projection_dim=32,
                                                               rope_axes_dim=(2, 2, 4))
        vae = diffusers.AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                                  norm_num_groups=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                                  up_block_types=("HunyuanVideoUpBlock3D",) * 4)
        pipe = diffusers.HunyuanVideoPipeline(text_encoder=_llama_text(), tokenizer=t5_tokenizer(), transformer=transformer,
                                              vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
                                              text_encoder_2=clip_text(vocab=514, max_position_embeddings=77),
                                              tokenizer_2=clip_tokenizer(tok_dir))
    elif family == "ltx":
        transformer = diffusers.LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                                           num_attention_heads=2, attention_head_dim=8,
                                                           cross_attention_dim=16, num_layers=1, caption_channels=32)
        vae = diffusers.AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8,
                                              block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                              layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                              spatio_temporal_scaling=(True, True, False, False),
                                              decoder_spatio_temporal_scaling=(True, True, False, False),
                                              decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                              upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
                                              patch_size_t=1, encoder_causal=True, decoder_causal=False)
        pipe = diffusers.LTXPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_text(), vae=vae, transformer=transformer,
                                     scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    elif family == "animatediff":
        unet = diffusers.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                              in_channels=4, out_channels=4, norm_num_groups=4,
                                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                              cross_attention_dim=32, attention_head_dim=2)
        adapter = diffusers.MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1,
                                          motion_norm_num_groups=4, motion_num_attention_heads=2)
        scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                            clip_sample=False, steps_offset=1)
        pipe = diffusers.AnimateDiffPipeline(unet=unet, motion_adapter=adapter, scheduler=scheduler, vae=tiny_vae(),
                                             text_encoder=clip_text(), tokenizer=clip_tokenizer(tok_dir))
    else:
        raise ValueError(family)
    pipe.save_pretrained(directory)
    return directory


def _umt5_text():
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def _llama_text():
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=1))


def _clip_image_encoder() -> dict:
    """Wan 2.1 I2V's CLIP image encoder and processor, tiny (32 x 32 images, 8 x 8 patches)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, intermediate_size=37, patch_size=8)
    return {"image_encoder": CLIPVisionModel(config), "image_processor": CLIPImageProcessor(crop_size=32, size=32)}
