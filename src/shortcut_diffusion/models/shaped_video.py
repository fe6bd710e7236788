"""Wan 2.1 text-to-video 1.3B with random weights: its transformer and its VAE, at real scale.

As for the image families of :mod:`.shaped`, cost does not depend on the weights' values, so the
published configuration with random weights measures what an iteration costs on the real model,
with nothing to download. Prompts are fixed random UMT5-XXL-shaped embeddings (512 tokens x 4096,
a null row for classifier-free guidance at Wan's scale 5.0); the scheduler is flow matching with
Wan's shift 3.0 at 480p, sampled by Euler (the published pipeline samples the same flow with UniPC:
one network call per step either way). Unlike the image families, rewards see decoded frames: the
VAE decodes every latent frame, each under gradient checkpointing (:func:`checkpointed_decode`), so
the decoder's graph is one latent frame's at a time.

``load_model("random:wan:480x832", num_frames=81)`` builds it (height x width in pixels, multiples
of 16; frames ``1 + 4k``); ``:tiny`` swaps in a toy configuration of the same architecture (tests,
CPU smoke runs); ``:blocks`` turns on the transformer's block-wise gradient checkpointing (what
video reward fine-tuning runs with: one block's activations at a time on the backward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.pipelines.video import VideoModel, WanDenoiser
from shortcut_diffusion.models.shaped import ShapedTransformer

WAN21_T2V_1_3B = dict(  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)
WAN21_VAE = dict(  # its vae/config.json (the latent statistics are diffusers' defaults, Wan 2.1's)
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
)
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
TINY_WAN_VAE = dict(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                    latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 2.0, 0.8, 1.1])
WAN_TOKENS = 512  # the pipeline's max_sequence_length
TINY_TOKENS = 8
SPATIAL, TEMPORAL = 8, 4  # the VAE's compression


def checkpointed_decode(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan``'s decode (``B x C x T x H x W``, clamped to [-1, 1]), one latent frame at a
    time as the VAE itself decodes, each frame's decoder call under gradient checkpointing: the
    backward pass recomputes one frame's graph at a time. The causal cache passes between frames as
    the checkpointed calls' inputs and outputs."""
    from torch.utils.checkpoint import checkpoint

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    cache: list[Any] = list(vae._feat_map)
    frames = []
    for i in range(x.shape[2]):
        def frame(chunk: torch.Tensor, *state: Any, first: bool = i == 0) -> tuple[Any, ...]:
            feat = list(state)
            out = vae.decoder(chunk, feat_cache=feat, feat_idx=[0], first_chunk=first)
            return (out, *feat)

        out, *cache = checkpoint(frame, x[:, :, i:i + 1], *cache, use_reentrant=False)
        frames.append(out)
    vae.clear_cache()
    return torch.cat(frames, 2).clamp(-1.0, 1.0)


@dataclass(eq=False)
class ShapedWan(ShapedTransformer):
    """Wan 2.1 T2V 1.3B (see the module docstring): ``sample_shape`` is ``C x T x h x w``, a
    video decodes to ``B x T x C x H x W`` float32 in [-1, 1]."""

    family: ClassVar[str] = "wan-shaped"
    architecture: ClassVar[str] = "wan"
    network_class: ClassVar[str] = "WanTransformer3DModel"
    network_config: ClassVar[dict] = WAN21_T2V_1_3B
    tiny_config: ClassVar[dict] = TINY_WAN
    default_guidance: ClassVar[float] = 5.0
    tokens: ClassVar[int] = WAN_TOKENS
    vae: Optional[nn.Module] = None
    num_frames: int = 81

    @classmethod
    def conditions(cls, config: dict) -> dict[str, tuple[int, ...]]:
        return {"encoder_hidden_states": (cls.tokens, config["text_dim"])}

    @classmethod
    def new_scheduler(cls) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=3.0)

    @property
    def image_shape(self) -> tuple[int, ...]:
        h, w = self.latent_hw
        return (self.num_frames, 3, SPATIAL * h, SPATIAL * w)

    def modules(self) -> list[nn.Module]:
        return [self.network, self.vae]

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return WanDenoiser(self.network_module, expand=False)

    frame_decode: ClassVar[str] = "causal"  # Wan's VAE: a prefix of latent frames decodes the first frames
    frames_decoded = VideoModel.frames_decoded
    decode_frames = VideoModel.decode_frames
    causal_prefix = VideoModel.causal_prefix
    latent_prefix = VideoModel.latent_prefix

    def temporal_factor(self) -> int:
        return TEMPORAL

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        stats = [torch.as_tensor(v).view(1, -1, 1, 1, 1).to(latents) for v in (config.latents_std, config.latents_mean)]
        z = (latents * stats[0] + stats[1]).to(next(self.vae.parameters()).dtype)
        return checkpointed_decode(self.vae, z).float().permute(0, 2, 1, 3, 4)


def shaped_wan(height: Optional[int] = None, width: Optional[int] = None, frames: Optional[int] = None,
               tiny: bool = False, blocks: bool = False, seed: int = 0, classes: int = 10) -> ShapedWan:
    """Wan 2.1 T2V 1.3B (or its ``tiny`` configuration) with random weights, ``height x width``
    pixels (default 480 x 832; tiny 16 x 16), ``frames`` frames (default 81; tiny 5)."""
    import diffusers

    height, width = height or (16 if tiny else 480), width or (16 if tiny else 832)
    frames = frames or (5 if tiny else 81)
    if height % 16 or width % 16:
        raise UsageError(f"random:wan: height and width must be multiples of 16 pixels, got {height}x{width}")
    if frames < 1 or (frames - 1) % TEMPORAL:
        raise UsageError(f"--frames {frames}: Wan's VAE compresses {TEMPORAL} frames into one after the first; "
                         f"give 1 + {TEMPORAL} * k frames (e.g. 81)")
    torch.manual_seed(seed)
    network = diffusers.WanTransformer3DModel(**(TINY_WAN if tiny else WAN21_T2V_1_3B)).eval().requires_grad_(False)
    if blocks:
        network.enable_gradient_checkpointing()
    vae = diffusers.AutoencoderKLWan(**(TINY_WAN_VAE if tiny else WAN21_VAE)).eval().requires_grad_(False)
    config = TINY_WAN if tiny else WAN21_T2V_1_3B
    generator = torch.Generator().manual_seed(seed)
    tokens = TINY_TOKENS if tiny else WAN_TOKENS
    tables = {"encoder_hidden_states": torch.randn(classes + 1, tokens, config["text_dim"], generator=generator)}
    h, w = height // SPATIAL, width // SPATIAL
    return ShapedWan(network_module=network, scheduler=ShapedWan.new_scheduler(),
                     sample_shape=(config["in_channels"], (frames - 1) // TEMPORAL + 1, h, w), tables=tables,
                     guidance_scale=ShapedWan.default_guidance, latent_hw=(h, w), vae=vae, num_frames=frames)


def parse_wan(rest: list[str], num_frames: Optional[int] = None) -> ShapedWan:
    """``random:wan[:HEIGHTxWIDTH][:tiny][:blocks]`` with ``num_frames`` (``--frames``)."""
    flags = {p for p in rest if p in ("tiny", "blocks")}
    sizes = [p for p in rest if p not in flags]
    height = width = None
    if sizes:
        h, sep, w = sizes[0].partition("x")
        if not (sep and h.isdigit() and w.isdigit()) or len(sizes) > 1:
            raise UsageError(f"random:wan: expected random:wan[:HEIGHTxWIDTH][:tiny][:blocks], got {':'.join(rest)!r}")
        height, width = int(h), int(w)
    return shaped_wan(height, width, num_frames, tiny="tiny" in flags, blocks="blocks" in flags)
