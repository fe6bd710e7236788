"""Adapters that turn diffusers networks into the sampler's denoiser ``(x, t, cond) -> output``.

- :class:`UNet2DDenoiser` wraps ``UNet2DModel``; ``cond`` is its ``class_labels`` (integer labels,
  or embedding vectors for ``class_embed_type="identity"``), or ``None``.
- :class:`UNet2DConditionDenoiser` wraps ``UNet2DConditionModel``; ``cond`` is the
  ``encoder_hidden_states`` tensor or a dict of the model's keyword arguments
  (``encoder_hidden_states``, ``added_cond_kwargs``, ...).
- :class:`SD3Denoiser` and :class:`FluxDenoiser` wrap the transformers (MMDiT) of SD3 and Flux;
  ``cond`` is a dict of the batched prompt tensors (``encoder_hidden_states``,
  ``pooled_projections``) so that the sampler can split or concatenate it by rows; Flux's position
  ids are not batched and live on the adapter.
- :class:`ClassifierFreeGuidance` wraps any denoiser: one batched call on ``[uncond, cond]``
  combined as ``uncond + scale * (cond - uncond)``, optionally with guidance rescale
  (Lin et al., arXiv 2305.08891), exactly as diffusers' pipelines do.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import current_rows


class UNet2DDenoiser(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.unet(x, t, class_labels=cond).sample


class UNet2DConditionDenoiser(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        kwargs = dict(cond) if isinstance(cond, Mapping) else {"encoder_hidden_states": cond}
        return self.unet(x, t, **kwargs).sample


def _cat(a: Any, b: Any) -> Any:
    """Concatenate two conditionings along the batch: tensors, dicts of them, or None."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.dtype)])
    if isinstance(a, Mapping):
        return {key: _cat(a[key], b[key]) for key in a}
    raise TypeError(f"cannot batch conditioning of type {type(a).__name__}")


class ClassifierFreeGuidance(nn.Module):
    """``uncond + scale * (cond - uncond)`` from one batched call of ``denoiser``.

    ``uncond`` is the unconditional conditioning for one sample (batch 1, broadcast to the batch)
    or for the whole batch. With ``scale == 1`` only the conditional branch is evaluated.
    """

    def __init__(self, denoiser: nn.Module, uncond: Any, scale: float = 7.5, rescale: float = 0.0):
        super().__init__()
        self.denoiser, self.uncond = denoiser, uncond
        self.scale, self.rescale = float(scale), float(rescale)

    @staticmethod
    def _expand(uncond: Any, batch: int) -> Any:
        """``uncond`` for a call on ``batch`` rows: broadcast from one row, as is for the whole
        batch, or the rows of the call when the sampler runs a subset (per-sample plans)."""
        if isinstance(uncond, torch.Tensor):
            if uncond.shape[0] == 1:
                return uncond.expand(batch, *uncond.shape[1:])
            if uncond.shape[0] == batch:
                return uncond
            rows = current_rows()
            if rows is not None and uncond.shape[0] == rows[1]:
                return uncond[rows[0].to(uncond.device)]
            raise UsageError(f"the unconditional conditioning has {uncond.shape[0]} rows for a batch of {batch}; "
                             "give one row (broadcast) or one per sample")
        if isinstance(uncond, Mapping):
            return {k: ClassifierFreeGuidance._expand(v, batch) for k, v in uncond.items()}
        return uncond

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoiser(x, t, cond)
        uncond = self._expand(self.uncond, x.shape[0])
        if t.dim() and t.shape[0] == x.shape[0] > 1:  # one timestep per row (a batched parallel sweep)
            t = torch.cat([t, t])
        out_uncond, out_cond = self.denoiser(
            torch.cat([x, x]), t, _cat(uncond, cond)
        ).chunk(2)
        guided = out_uncond + self.scale * (out_cond - out_uncond)
        if self.rescale > 0:
            guided = rescale_noise_cfg(guided, out_cond, self.rescale)
        return guided


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Match the guided output's per-sample std to the conditional one's, blended by ``rescale``.

    Section 3.4 of Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"
    (arXiv 2305.08891).
    """
    dims = list(range(1, guided.ndim))
    matched = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * matched + (1 - rescale) * guided


class SD3Denoiser(nn.Module):
    """``SD3Transformer2DModel`` as the pipeline calls it (timestep broadcast to the batch)."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.transformer(hidden_states=x, timestep=t.expand(x.shape[0]),
                                encoder_hidden_states=cond["encoder_hidden_states"],
                                pooled_projections=cond["pooled_projections"], return_dict=False)[0]


class FluxDenoiser(nn.Module):
    """``FluxTransformer2DModel`` on packed latents, with the distilled guidance embedding.

    Flux-dev takes the guidance scale as an input (``guidance_embeds``) instead of a second,
    unconditional batch; Flux-schnell has no guidance input (``guidance=None``).
    """

    def __init__(self, transformer: nn.Module, img_ids: torch.Tensor, txt_ids: torch.Tensor,
                 guidance: Optional[float] = None):
        super().__init__()
        self.transformer = transformer
        self.img_ids, self.txt_ids, self.guidance = img_ids, txt_ids, guidance

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        batch = x.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), float(self.guidance if self.guidance is not None else 3.5),
                                  device=x.device, dtype=torch.float32)
        return self.transformer(hidden_states=x, timestep=(t.expand(batch) / 1000).to(x.dtype), guidance=guidance,
                                pooled_projections=cond["pooled_projections"],
                                encoder_hidden_states=cond["encoder_hidden_states"],
                                txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]

