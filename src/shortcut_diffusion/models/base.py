"""The model interface every command goes through.

A :class:`DiffusionModel` declares what sampling, rewards, targets and reports need, and nothing
else. Every command reaches it through :func:`shortcut_diffusion.tasks.generate.generate`, so that what
is optimized, evaluated, checked and benchmarked is one computation.

========================  ==========================================================================
``scheduler``             the model's own diffusers scheduler (a template; never stepped)
``sample_shape``          the shape of one latent (CHW, or tokens x channels for packed latents)
``image_shape``           the shape of one decoded image (CHW in [-1, 1])
``guidance_scale``        the default guidance (1.0: unguided)
``condition_kind``        ``"class"`` (integer labels), ``"prompt"`` (strings) or ``"none"``
``network``               the denoising network (UNet or transformer): what LoRA and full training change
``device``, ``dtype``     where the network lives and the dtype of its frozen weights
``conditioning(labels)``  the batched conditioning of one label per sample
``denoiser(guidance)``    ``(x_in, t, cond) -> output``, guided at ``guidance`` (default: the
                          model's scale) by the model's own kind of guidance; the same meaning for
                          every model
``timestep_kwargs(N)``    the extra ``set_timesteps`` arguments of the model's pipeline
``decode``/``encode``     latents <-> images in [-1, 1] (float32 images)
``embedding_parameters``  the conditioning tensors an embedding target trains (fp32 masters)
``classifier``, ``judge``  the testbed's digit classifier (rewards) and held-out judge, or None
``panel``                  the testbed's judge panel (never rewards), or None
========================  ==========================================================================

The precision policy (see :mod:`shortcut_diffusion.precision`): frozen weights are in the dtype the
model was loaded in, latents and trained tensors stay float32, and :meth:`denoiser` casts the
network input to the network's dtype and its output back to the latent's dtype.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.models.denoisers import ClassifierFreeGuidance, UNet2DDenoiser

CONDITION_KINDS = ("class", "prompt", "none")


class CastDenoiser(nn.Module):
    """Runs a network whose weights are in ``dtype`` on float32 latents: the input (and floating
    conditioning) is cast to ``dtype``, the output back to the latent's dtype, so that the optimized
    variable and the scheduler stay float32."""

    def __init__(self, denoiser: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.denoiser, self.dtype = denoiser, dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return self.denoiser(x.to(self.dtype), t, cast_floating(cond, self.dtype)).to(x.dtype)


def cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in ``value`` (a tensor, or dicts of them) cast to ``dtype``; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: cast_floating(v, dtype) for k, v in value.items()}
    return value


class DiffusionModel(abc.ABC):
    """A diffusion model as every command sees it (see the module docstring)."""

    family: ClassVar[str] = ""
    condition_kind: ClassVar[str] = "class"
    scheduler: Any
    sample_shape: tuple[int, ...]
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    num_classes: Optional[int] = None
    classifier: Optional[nn.Module] = None
    judge: Optional[nn.Module] = None
    """A second classifier that is never a reward (the testbed's held-out judge), or None."""
    panel: Optional[Any] = None
    """Judges of several model families that are never rewards (the testbed's judge panel), or None."""
    cpu_threads: ClassVar[Optional[int]] = None
    """Intra-op threads the model runs best with on a CPU (None: torch's default). Small models
    lose more to thread synchronisation than they gain, most of all on a busy machine."""
    lora_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
    """The layers LoRA adapts by default (name suffixes): a UNet's attention projections and the
    convolutions of its residual blocks."""

    # -- shapes and networks ----------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, ...]:
        """One decoded image; pixel-space models decode to the sample itself."""
        return tuple(self.sample_shape)

    @property
    @abc.abstractmethod
    def network(self) -> nn.Module:
        """The denoising network: what LoRA and full fine-tuning train."""

    @abc.abstractmethod
    def set_network(self, module: nn.Module) -> None:
        """Put ``module`` in the network's place (full fine-tuning's frozen base copy)."""

    def modules(self) -> list[nn.Module]:
        """Every network of the model (their weights are not activations of a sampling graph)."""
        return [self.network]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's frozen weights."""
        return next(self.network.parameters()).dtype

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "DiffusionModel":
        """Move every network to ``device``; cast their floating weights to ``dtype`` (frozen weights
        run in the user's dtype)."""
        for module in self.modules():
            params = list(module.parameters())
            cast = dtype is not None and any(p.is_floating_point() and p.dtype != dtype for p in params)
            moves = device is not None and any(p.device != torch.device(device) for p in params)
            if cast:
                module.to(device=device, dtype=dtype)
            elif moves:  # (diffusers warns on any cast call, even a needless one)
                module.to(device)
        return self

    # -- conditioning -----------------------------------------------------------------------------
    def labels_from(self, items: Sequence[str], source: str) -> list:
        """Command-line conditions (``--cond``, ``--prompt``, a prompts file) as labels, checked.

        Class models take class indices (or ``all``), prompt models their prompts, unconditional
        models nothing (one empty label)."""
        items = [str(item) for item in items]
        if self.condition_kind == "none":
            return [""]
        if not items:
            raise UsageError(f"{source} gives no conditions" + (" (--prompt is required for a text-to-image model)"
                                                                if self.condition_kind == "prompt" else ""))
        if self.condition_kind == "prompt":
            return items
        if items == ["all"]:
            return list(range(self.num_classes))
        labels = []
        for item in items:
            try:
                c = int(item)
            except ValueError:
                raise UsageError(f"{source}: {item!r} is not a class index (this model is class-conditional)") from None
            if not 0 <= c < self.num_classes:
                raise UsageError(f"{source}: class {c} is out of range 0..{self.num_classes - 1}")
            labels.append(c)
        return labels

    @abc.abstractmethod
    def conditioning(self, labels: Sequence[Any]) -> Any:
        """The batched conditioning of ``labels`` (one per sample), on the model's device."""

    def unconditional(self) -> Any:
        """The unconditional conditioning of one sample (classifier-free guidance), or None."""
        return None

    def prepare(self, labels: Sequence[Any]) -> None:
        """Work done once per set of labels before sampling (pipelines encode their prompts)."""

    def embedding_parameters(self, labels: Sequence[Any]) -> dict[str, nn.Parameter]:
        """Make the conditioning of ``labels`` trainable and return it: float32 master tensors,
        by the names :meth:`load_embeddings` reads back. Models without one refuse."""
        raise UsageError(f"target embedding needs a model with conditioning embeddings; {self.family} has none")

    def load_embeddings(self, tensors: dict[str, torch.Tensor], labels: Sequence[Any]) -> None:
        """Put exported embedding tensors (:meth:`embedding_parameters`' names) in place."""
        raise UsageError(f"{self.family} models have no conditioning embeddings to load")

    # -- denoising --------------------------------------------------------------------------------
    @abc.abstractmethod
    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        """The ``(x_in, t, cond) -> output`` adapter of the network, in the network's dtype.

        ``guidance`` matters only where the guidance scale is an input of the network (Flux);
        classifier-free guidance is added around it by :meth:`denoiser`."""

    def denoiser(self, guidance: Optional[float] = None) -> nn.Module:
        """The sampling denoiser on float32 latents, guided at ``guidance`` (default: the model's
        scale): classifier-free guidance on ``[uncond, cond]`` where the model has an
        unconditional branch and the scale is not 1."""
        scale = self.guidance_scale if guidance is None else float(guidance)
        inner = self.network_denoiser(scale)
        if self.dtype != torch.float32:
            inner = CastDenoiser(inner, self.dtype)
        uncond = self.unconditional() if self.guided_at(scale) else None
        if uncond is None:
            return inner
        return ClassifierFreeGuidance(inner, uncond, scale=scale, rescale=self.guidance_rescale)

    def guided_at(self, scale: float) -> bool:
        """Whether ``scale`` calls for an unconditional branch (diffusers' pipelines: scale > 1)."""
        return scale != 1.0

    def timestep_kwargs(self, steps: int) -> dict[str, Any]:
        """Extra ``scheduler.set_timesteps`` arguments the model's pipeline passes."""
        return {}

    # -- images -----------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable decode to float32 images in [-1, 1] (pixel space: the sample itself)."""
        return latents.float()

    def images(self, latents: torch.Tensor) -> torch.Tensor:
        """What users see and rewards score: :meth:`decode` as float32, clamped to [-1, 1].

        (Unclamped pixels beyond the range are an easy reward hack that disappears on display.)"""
        return self.decode(latents).float().clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the latents :meth:`decode` maps back to them."""
        return images

    # -- options of pipelines (no-ops elsewhere) ----------------------------------------------------
    def memory_options(self, **options: Any) -> "DiffusionModel":
        """VAE slicing/tiling/checkpointing and attention slicing, where the model has them;
        ``vae_tiling`` and ``decode_chunk`` are refused on a model without a VAE."""
        if options.get("vae_tiling") or options.get("decode_chunk"):
            option = "--vae-tiling" if options.get("vae_tiling") else "--decode-chunk"
            raise UsageError(f"{option}: {self.family} models decode without a VAE; it applies to latent pipelines")
        return self

    def decode_frames(self, latents: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Video models: :meth:`images` with only what ``frames`` needs decoded (where the VAE
        allows it); the frames not decoded are zeros."""
        raise UsageError(f"{self.family} models make images, not videos: there are no frames to choose")

    def offload_text_encoders(self) -> None:
        """Move text encoders to the CPU once prompts are encoded, where the model has them."""

    def metrics(self, images: torch.Tensor, labels: Sequence[Any]) -> dict[str, float]:
        """Evaluation metrics beyond the reward (the testbed's digits-FD, accuracy, diversity)."""
        return {}


class TableConditioned(DiffusionModel):
    """A class-conditional model whose conditioning is a table of embeddings outside the network
    (``embeddings``: an ``nn.Embedding`` with one row per class and, for guidance, a null row at
    ``num_classes``), shaped by :meth:`shape_embedding`; the network is ``unet``, run through the
    ``adapter`` denoiser class."""

    embeddings: nn.Embedding
    unet: nn.Module
    adapter: ClassVar[type] = UNet2DDenoiser

    @property
    def network(self) -> nn.Module:
        return self.unet

    def set_network(self, module: nn.Module) -> None:
        self.unet = module

    def network_denoiser(self, guidance: float = 1.0) -> nn.Module:
        return self.adapter(self.unet)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return self.embeddings.num_embeddings - (1 if self.has_null_row else 0)

    has_null_row: ClassVar[bool] = True

    def shape_embedding(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def modules(self) -> list[nn.Module]:
        return [self.network, self.embeddings]

    def conditioning(self, labels: Sequence[Any]) -> torch.Tensor:
        index = torch.as_tensor(labels, dtype=torch.long).to(self.embeddings.weight.device)
        return self.shape_embedding(self.embeddings(index))

    def unconditional(self) -> Optional[torch.Tensor]:
        if not self.has_null_row:
            return None
        n = self.num_classes
        return self.shape_embedding(self.embeddings.weight[n : n + 1].detach())

    def embedding_parameters(self, labels: Sequence[Any]) -> dict[str, nn.Parameter]:
        weight = self.embeddings.weight
        if weight.dtype != torch.float32:  # the trained table keeps a float32 master copy
            self.embeddings.weight = nn.Parameter(weight.detach().float())
        self.embeddings.weight.requires_grad_(True)
        return {"weight": self.embeddings.weight}

    def load_embeddings(self, tensors: dict[str, torch.Tensor], labels: Sequence[Any]) -> None:
        weight = tensors["weight"]
        if weight.shape != self.embeddings.weight.shape:
            raise UsageError(f"embedding table {tuple(weight.shape)} does not fit {tuple(self.embeddings.weight.shape)}")
        with torch.no_grad():
            self.embeddings.weight.copy_(weight)
