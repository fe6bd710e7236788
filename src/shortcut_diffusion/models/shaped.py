"""Denoisers with the real architectures of SD 1.5, SDXL, SD3 and Flux and random weights.

Time and memory of an optimization step do not depend on the weights' values, so a network with a
family's real configuration measures what an iteration costs on the real model. Conditions are
class indices mapped to fixed random "prompt embeddings" of the family's shapes (with a null row
for classifier-free guidance), the scheduler is the family's, guidance is the family's default
(CFG, or Flux's guidance input), and ``decode`` is the identity: rewards see the latents, so the
measurement is the sampling graph. ``load_model("random:sdxl:1024")`` builds one (resolution in
pixels, 8 pixels per latent); ``tiny=True`` (``random:sdxl:64:tiny``) swaps in a toy-sized
configuration of the same architecture for smoke tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.models.denoisers import FluxDenoiser, SD3Denoiser, UNet2DConditionDenoiser
from shortcut_diffusion.models.sd15 import SD15_SCHEDULER, SD15_UNET

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
SD3_TRANSFORMER = dict(  # SD3 medium
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)
FLUX_TRANSFORMER = dict(  # Flux.1-dev
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY = {
    "sd15": dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                 norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=2),
    "sdxl": dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                 norm_num_groups=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80, cross_attention_dim=64),
    "sd3": dict(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
                caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4),
    "flux": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
                 guidance_embeds=True),
}


@dataclass(eq=False)
class ShapedModel(DiffusionModel):
    """A family's denoising network with random weights (see the module docstring); the family's
    subclass holds its configurations, scheduler and guidance, and says how its conditioning and
    its network are called."""

    condition_kind: ClassVar[str] = "class"
    architecture: ClassVar[str]  # FAMILY in random:FAMILY
    network_class: ClassVar[str] = "UNet2DConditionModel"  # diffusers' class of the network
    network_config: ClassVar[dict]  # the real configuration
    tiny_config: ClassVar[dict]  # a toy-sized configuration of the same architecture
    default_guidance: ClassVar[float]
    default_resolution: ClassVar[int] = 1024
    network_module: nn.Module
    scheduler: Any
    sample_shape: tuple[int, ...]
    tables: dict[str, torch.Tensor]
    """Conditioning path -> ``[classes + 1, *shape]`` (the last row is the unconditional one)."""
    guidance_scale: float
    latent_hw: tuple[int, int] = (0, 0)

    @classmethod
    def conditions(cls, config: dict) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the conditioning tensors (dotted paths for nested dicts)."""
        return {"encoder_hidden_states": (77, config["cross_attention_dim"])}

    @classmethod
    def new_scheduler(cls) -> Any:
        raise NotImplementedError

    @classmethod
    def latent_shape(cls, config: dict, h: int, w: int) -> tuple[int, ...]:
        """One latent of ``h x w`` latent pixels."""
        return (config["in_channels"], h, w)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return next(iter(self.tables.values())).shape[0] - 1

    @property
    def network(self) -> nn.Module:
        return self.network_module

    def set_network(self, module: nn.Module) -> None:
        self.network_module = module

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "ShapedModel":
        super().to(device, dtype)
        self.tables = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in self.tables.items()}
        return self

    def rows(self, index: torch.Tensor) -> dict[str, Any]:
        cond: dict[str, Any] = {}
        for path, table in self.tables.items():
            head, _, leaf = path.rpartition(".")
            (cond.setdefault(head, {}) if head else cond)[leaf] = table[index.to(table.device)]
        return cond

    def conditioning(self, labels: Sequence[Any]) -> Any:
        return self.rows(torch.as_tensor(list(labels), dtype=torch.long))

    def unconditional(self) -> Any:
        return self.rows(torch.tensor([self.num_classes]))

    def guided_at(self, scale: float) -> bool:
        return scale > 1.0

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return UNet2DConditionDenoiser(self.network_module)


class ShapedSD15(ShapedModel):
    family: ClassVar[str] = "sd15-shaped"
    architecture: ClassVar[str] = "sd15"
    network_config: ClassVar[dict] = SD15_UNET
    tiny_config: ClassVar[dict] = TINY["sd15"]
    default_guidance: ClassVar[float] = 7.5
    default_resolution: ClassVar[int] = 512

    @classmethod
    def new_scheduler(cls) -> Any:
        from diffusers import DDIMScheduler

        return DDIMScheduler(**SD15_SCHEDULER)


class ShapedSDXL(ShapedModel):
    family: ClassVar[str] = "sdxl-shaped"
    architecture: ClassVar[str] = "sdxl"
    network_config: ClassVar[dict] = SDXL_UNET
    tiny_config: ClassVar[dict] = TINY["sdxl"]
    default_guidance: ClassVar[float] = 5.0

    @classmethod
    def conditions(cls, config: dict) -> dict[str, tuple[int, ...]]:
        text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        return {**super().conditions(config), "added_cond_kwargs.text_embeds": (text,)}

    @classmethod
    def new_scheduler(cls) -> Any:
        from diffusers import EulerDiscreteScheduler

        return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      timestep_spacing="leading", steps_offset=1)

    def rows(self, index: torch.Tensor) -> dict[str, Any]:
        cond = super().rows(index)
        h, w = (8 * self.latent_hw[0], 8 * self.latent_hw[1])  # added time ids: original size, crop, target size
        ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=index.device)
        cond["added_cond_kwargs"]["time_ids"] = ids.expand(len(index), 6).to(next(iter(self.tables.values())))
        return cond


class ShapedTransformer(ShapedModel):
    """The MMDiT families: prompt tokens and a pooled projection condition the transformer."""

    lora_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    tokens: ClassVar[int]  # prompt tokens of the family's text encoders

    @classmethod
    def conditions(cls, config: dict) -> dict[str, tuple[int, ...]]:
        return {"encoder_hidden_states": (cls.tokens, config["joint_attention_dim"]),
                "pooled_projections": (config["pooled_projection_dim"],)}


class ShapedSD3(ShapedTransformer):
    family: ClassVar[str] = "sd3-shaped"
    architecture: ClassVar[str] = "sd3"
    network_class: ClassVar[str] = "SD3Transformer2DModel"
    network_config: ClassVar[dict] = SD3_TRANSFORMER
    tiny_config: ClassVar[dict] = TINY["sd3"]
    default_guidance: ClassVar[float] = 7.0
    tokens: ClassVar[int] = 333

    @classmethod
    def new_scheduler(cls) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=3.0)

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return SD3Denoiser(self.network_module)


class ShapedFlux(ShapedTransformer):
    """Flux-dev: the guidance is an input of the network (no unconditional batch)."""

    family: ClassVar[str] = "flux-shaped"
    architecture: ClassVar[str] = "flux"
    network_class: ClassVar[str] = "FluxTransformer2DModel"
    network_config: ClassVar[dict] = FLUX_TRANSFORMER
    tiny_config: ClassVar[dict] = TINY["flux"]
    default_guidance: ClassVar[float] = 3.5
    tokens: ClassVar[int] = 512

    @classmethod
    def new_scheduler(cls) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                               max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)

    @classmethod
    def latent_shape(cls, config: dict, h: int, w: int) -> tuple[int, ...]:
        return ((h // 2) * (w // 2), config["in_channels"])  # packed 2x2 patches

    def unconditional(self) -> Any:
        return None

    def guided_at(self, scale: float) -> bool:
        return False

    def network_denoiser(self, guidance: float = 3.5) -> nn.Module:
        from diffusers import FluxPipeline

        h, w = self.latent_hw
        img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, self.device, torch.float32)
        tokens = self.tables["encoder_hidden_states"].shape[1]
        return FluxDenoiser(self.network_module, img_ids, torch.zeros(tokens, 3, device=self.device), guidance=guidance)

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler.config
        mu = calculate_shift(self.sample_shape[0], config.base_image_seq_len, config.max_image_seq_len,
                             config.base_shift, config.max_shift)
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}


NETWORKS: dict[str, type[ShapedModel]] = {cls.architecture: cls for cls in (ShapedSD15, ShapedSDXL, ShapedSD3, ShapedFlux)}


def shaped_model(family: str, resolution: Optional[int] = None, tiny: bool = False, seed: int = 0,
                 classes: int = 10) -> ShapedModel:
    """``family``'s network (real or ``tiny`` configuration) with random weights, for ``resolution``
    pixels (a multiple of 64; 16 with ``tiny``)."""
    import diffusers

    if family not in NETWORKS:
        raise UsageError(f"unknown architecture {family!r}; choose one of {', '.join(NETWORKS)}")
    model_class = NETWORKS[family]
    resolution = resolution or (64 if tiny else model_class.default_resolution)
    multiple = 16 if tiny else 64
    if resolution % multiple:
        raise UsageError(f"random:{family}: the resolution must be a multiple of {multiple}, got {resolution}")
    config = model_class.tiny_config if tiny else model_class.network_config
    torch.manual_seed(seed)
    network = getattr(diffusers, model_class.network_class)(**config).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    tables = {path: torch.randn(classes + 1, *shape, generator=generator)
              for path, shape in model_class.conditions(config).items()}
    h = w = resolution // 8
    return model_class(network_module=network, scheduler=model_class.new_scheduler(),
                       sample_shape=model_class.latent_shape(config, h, w), tables=tables,
                       guidance_scale=model_class.default_guidance, latent_hw=(h, w))


def parse_random(name: str) -> Callable[[], ShapedModel]:
    """``random:FAMILY[:RESOLUTION][:tiny]`` (and ``sd15-random[:RESOLUTION]``) as a builder."""
    if name == "sd15-random" or name.startswith("sd15-random:"):
        parts = ["sd15", *filter(None, name.partition(":")[2:])]
    else:
        parts = name.split(":")[1:]
    family, rest = (parts[0] if parts else ""), parts[1:]
    tiny = "tiny" in rest
    sizes = [p for p in rest if p != "tiny"]
    if sizes and not sizes[0].isdigit():
        raise UsageError(f"random:{family}: RESOLUTION needs an integer resolution, got {sizes[0]!r}")
    return lambda: shaped_model(family, int(sizes[0]) if sizes else None, tiny=tiny)
