"""What every latent text-to-image pipeline family shares: prompts, sizes, the VAE, devices.

A family (:mod:`.unet` for SD and SDXL, :mod:`.mmdit` for SD3 and Flux) says how it encodes a
prompt, which network adapter it uses and how its latents differ; everything else is here, built
from the pipeline's own components and helpers so that a no-grad sample equals the pipeline's
``__call__`` on the same noise.

Prompts are encoded once and cached, so iterations never re-run the text encoders;
:meth:`PipelineModel.offload_text_encoders` then moves them to the CPU.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.base import DiffusionModel

TRAINED_EMBEDDINGS = ("encoder_hidden_states", "pooled_projections", "added_cond_kwargs.text_embeds")
"""The tensors of a prompt's conditioning an embedding target trains (token and pooled embeddings)."""


MAX_AREA = 16
"""The most pixels a run may ask for, in multiples of the pipeline's native size (4x each side).
Within it the memory check (:mod:`shortcut_diffusion.tasks.memory`) measures a sample at the size
asked for; beyond it, that measurement alone (attention is quadratic in the pixels) can exhaust
the machine."""


def check_area(height: int, width: int, native: int) -> None:
    """Refuse a resolution beyond :data:`MAX_AREA` times the native ``native x native`` pixels."""
    if height * width > MAX_AREA * native * native:
        option = "--height" if height >= width else "--width"
        raise UsageError(f"{option} {max(height, width)}: {height}x{width} is {height * width / native ** 2:.0f} times "
                         f"the pixels of this model's native {native}x{native}; at most {MAX_AREA} times is accepted "
                         f"(e.g. {4 * native}x{4 * native})")


class PipelineModel(DiffusionModel):
    """A diffusers text-to-image pipeline with a VAE (see the module docstring)."""

    condition_kind: ClassVar[str] = "prompt"
    default_guidance: ClassVar[float] = 7.5
    network_name: ClassVar[str] = "unet"
    size_multiple: ClassVar[int] = 1
    """Height and width must be multiples of the VAE factor times this (Flux packs 2 x 2 patches)."""
    max_sequence_length: int = 256

    def __init__(self, pipe: Any, *, height: Optional[int] = None, width: Optional[int] = None,
                 guidance_scale: Optional[float] = None, guidance_rescale: float = 0.0,
                 negative_prompt: Optional[str] = None, max_sequence_length: Optional[int] = None):
        self.pipe = pipe
        self.guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length or type(self).max_sequence_length
        for module in self.modules():  # frozen; a target enables what it trains
            module.requires_grad_(False)
        self._prompts: dict[str, dict[str, Any]] = {}
        self._uncond: Optional[dict[str, Any]] = None
        factor = self.spatial_factor()
        default = self.default_size()
        self.height, self.width = int(height or default), int(width or default)
        multiple = factor * self.size_multiple
        if self.height % multiple or self.width % multiple:
            raise UsageError(f"height and width must be multiples of {multiple} for this model, got {self.height}x{self.width}")
        check_area(self.height, self.width, default)
        self.sample_shape = self.latent_shape(self.height // factor, self.width // factor)

    # -- shapes and networks ----------------------------------------------------------------------
    def spatial_factor(self) -> int:
        """Pixels per latent along each side (the VAE's spatial compression)."""
        return self.pipe.vae_scale_factor

    def default_size(self) -> int:
        """The pipeline's default image size in pixels."""
        return self.network.config.sample_size * self.pipe.vae_scale_factor

    def latent_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.network.config.in_channels, h, w)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (3, self.height, self.width)

    @property
    def network(self) -> nn.Module:
        return getattr(self.pipe, self.network_name)

    def set_network(self, module: nn.Module) -> None:
        setattr(self.pipe, self.network_name, module)

    def modules(self) -> list[nn.Module]:
        return [m for m in self.pipe.components.values() if isinstance(m, nn.Module)]

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    def guided_at(self, scale: float) -> bool:
        return scale > 1.0  # the pipelines' do_classifier_free_guidance

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "PipelineModel":
        moves = device is not None and torch.device(device) != self.device
        if moves or (dtype is not None and dtype != self.dtype):  # (diffusers warns on any .to() of fp16 on the CPU)
            self.pipe.to(device=device, dtype=dtype)
        self._prompts = {k: _to(v, device) for k, v in self._prompts.items()}
        self._uncond = _to(self._uncond, device) if self._uncond is not None else None
        return self

    # -- prompts ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompt(self, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(conditional, unconditional) conditioning of one prompt, batch 1, as the pipeline builds it."""

    def prepare(self, labels: Sequence[Any]) -> None:
        """Encode and cache every prompt not seen yet (each prompt once per model)."""
        for prompt in dict.fromkeys(labels):
            if prompt not in self._prompts:
                with torch.no_grad():
                    self._prompts[prompt], uncond = self.encode_prompt(prompt)
                self._uncond = self._uncond or uncond

    def conditioning(self, labels: Sequence[Any]) -> Any:
        if isinstance(labels, (str, torch.Tensor)) or not all(isinstance(p, str) for p in labels):
            raise UsageError("prompts must be a list of strings, one per sample")
        self.prepare(labels)
        return _stack([self._prompts[p] for p in labels], self.dtype)

    def unconditional(self) -> Any:
        if self._uncond is None:
            self.prepare([""])
        return self._uncond or None

    def embedding_parameters(self, labels: Sequence[Any]) -> dict[str, nn.Parameter]:
        """The token and pooled embeddings of each distinct prompt, as float32 parameters named
        ``"{prompt index}.{path}"`` (the prompts in order of first appearance)."""
        prompts = list(dict.fromkeys(labels))
        if not prompts or not all(prompts):
            raise UsageError("target embedding needs prompts")
        self.prepare(prompts)
        params = {}
        for i, prompt in enumerate(prompts):
            for path, tensor in _flatten(self._prompts[prompt]).items():
                if path in TRAINED_EMBEDDINGS:
                    if not isinstance(tensor, nn.Parameter):
                        tensor = nn.Parameter(tensor.detach().float().clone())
                        _assign(self._prompts[prompt], path, tensor)
                    params[f"{i}.{path}"] = tensor
        return params

    def load_embeddings(self, tensors: dict[str, torch.Tensor], labels: Sequence[Any]) -> None:
        prompts = list(dict.fromkeys(labels))
        self.prepare(prompts)
        for key, tensor in tensors.items():
            index, _, path = key.partition(".")
            _assign(self._prompts[prompts[int(index)]], path, tensor.to(self.device, self.dtype))

    def offload_text_encoders(self) -> None:
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to("cpu")

    # -- images -----------------------------------------------------------------------------------
    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The model's latents as the VAE decodes them (scaling and shift undone)."""
        config = self.pipe.vae.config
        latents = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        return latents + shift if shift is not None else latents

    def model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`vae_latents`."""
        config = self.pipe.vae.config
        shift = getattr(config, "shift_factor", None)
        latents = latents - shift if shift is not None else latents
        return latents * config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(self.vae_latents(latents).to(vae.dtype), return_dict=False)[0].float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the latents ``decode`` inverts (the VAE posterior's mean)."""
        vae = self.pipe.vae
        return self.model_latents(vae.encode(images.to(vae.dtype)).latent_dist.mean).float()

    def memory_options(self, *, vae_slicing: bool = False, vae_tiling: bool = False, attention_slicing: bool = False,
                       vae_checkpointing: bool = False, decode_chunk: Optional[int] = None) -> "PipelineModel":
        """The memory switches users expect (each calls the pipeline's or the VAE's own method)."""
        vae = self.pipe.vae
        if decode_chunk:
            raise UsageError("--decode-chunk applies to video pipelines (frames decoded a chunk at a time); "
                             "this pipeline makes images: use --vae-slicing")
        if vae_slicing:
            vae.enable_slicing()
        if vae_tiling:
            if not callable(getattr(vae, "enable_tiling", None)):
                raise UsageError(f"--vae-tiling: this pipeline's VAE ({type(vae).__name__}) has no tiled decoding; "
                                 "use --vae-slicing or --vae-checkpointing")
            vae.enable_tiling()
        if vae_checkpointing:
            vae.enable_gradient_checkpointing()
        if attention_slicing:
            self.pipe.enable_attention_slicing()
        return self


def _stack(items: list[Any], dtype: torch.dtype) -> Any:
    """Batch the per-prompt conditionings (trained float32 embeddings cast to the network's dtype)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        out = torch.cat(items)
        return out.to(dtype) if out.is_floating_point() else out
    return {k: _stack([item[k] for item in items], dtype) for k in first}


def _to(value: Any, device: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device) if device is not None else value
    return {k: _to(v, device) for k, v in value.items()}


def _flatten(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def _assign(value: dict, path: str, tensor: torch.Tensor) -> None:
    *head, last = path.split(".")
    for key in head:
        value = value[key]
    value[last] = tensor
