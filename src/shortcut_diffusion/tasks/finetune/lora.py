"""LoRA adapters through PEFT, saved in the diffusers LoRA format.

The file is ``DIR/pytorch_lora_weights.safetensors`` with keys ``unet.<peft key>`` and the
adapter's ``LoraConfig`` in the safetensors metadata (``lora_adapter_metadata``, keys prefixed
``unet.``), the layout ``StableDiffusionPipeline.save_lora_weights`` writes: a diffusers pipeline
loads it with ``pipe.load_lora_weights(DIR)``, a diffusers model with PEFT support with
``unet.load_lora_adapter(DIR, prefix="unet")``. :func:`load_lora` loads it into any module,
including the ``UNet2DModel`` of pixel-space models that has no loader of its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.reporting import atomic_write_bytes

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
PREFIX = "unet"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


def _peft():
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is a dependency
        raise UsageError("LoRA needs the peft package: pip install peft") from error
    return peft


LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layer types LoRA adapts (PEFT's; Conv3d: the video testbed's space-time convolutions)."""


def check_target_modules(module: nn.Module, targets: Sequence[str]) -> None:
    """Every target must name at least one Linear/Conv layer (PEFT's suffix matching)."""
    if not targets:
        raise UsageError("LoRA needs at least one target module")
    layers = [name for name, m in module.named_modules() if isinstance(m, LORA_LAYERS)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        suffixes = sorted({n.split(".")[-1] if not n.split(".")[-1].isdigit() else ".".join(n.split(".")[-2:]) for n in layers})
        raise UsageError(f"LoRA target module(s) {', '.join(missing)} not found in {type(module).__name__}; "
                         f"its layers end in: {', '.join(suffixes)}")


def _full_rank(layer: nn.Module) -> int:
    """The largest rank a LoRA update of ``layer`` can have: its smaller side."""
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return min(fan_in, layer.out_channels)


def check_rank(module: nn.Module, targets: Sequence[str], rank: int) -> None:
    """Refuse a rank beyond every targeted layer's full rank: it adds parameters (and memory), no capacity."""
    if rank < 1:
        raise UsageError(f"--lora-rank must be >= 1, got {rank}")
    widest = max((_full_rank(m) for n, m in module.named_modules() if isinstance(m, LORA_LAYERS)
                  and any(n == t or n.endswith("." + t) for t in targets)), default=0)
    if widest and rank > widest:
        raise UsageError(f"--lora-rank {rank} is above the full rank of every targeted layer (at most {widest} in "
                         f"{type(module).__name__}): use --lora-rank {widest} or less, or --target full")


def add_lora(module: nn.Module, rank: int = 4, alpha: Union[float, None] = None,
             targets: Sequence[str] = DEFAULT_TARGETS) -> list[nn.Parameter]:
    """Inject a LoRA adapter (B initialised to zero: the model is unchanged) and return its parameters."""
    peft = _peft()
    check_target_modules(module, targets)
    check_rank(module, targets, rank)
    config = peft.LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=list(targets),
                             init_lora_weights=True)
    peft.inject_adapter_in_model(config, module)
    module.requires_grad_(False)
    params = [p for name, p in module.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    module._sdo_lora_config = config  # type: ignore[attr-defined]
    return params


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's portable names (adapter name stripped)."""
    return _peft().get_peft_model_state_dict(module)


def save_lora(module: nn.Module, directory: Union[str, Path]) -> Path:
    """Write the adapter of ``module`` in the diffusers LoRA layout (atomically)."""
    from safetensors.torch import save

    config = getattr(module, "_sdo_lora_config", None)
    if config is None:
        raise UsageError("this module has no LoRA adapter added by shortcut_diffusion")
    meta = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps({f"{PREFIX}.{k}": v for k, v in meta.items()},
                                                       indent=2, sort_keys=True, default=str)}
    tensors = {f"{PREFIX}.{k}": v.detach().contiguous().cpu() for k, v in lora_state(module).items()}
    path = Path(directory) / WEIGHT_NAME
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def read_lora(directory: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors (prefix stripped) and the LoraConfig fields of a saved adapter."""
    from safetensors import safe_open

    path = Path(directory)
    path = path / WEIGHT_NAME if path.is_dir() else path
    if not path.is_file():
        raise UsageError(f"no LoRA weights at {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {k.removeprefix(PREFIX + "."): handle.get_tensor(k) for k in handle.keys()
                   if k.startswith(PREFIX + ".")}
    if METADATA_KEY not in metadata:
        raise UsageError(f"{path} has no {METADATA_KEY} metadata (not written by save_lora_weights?)")
    config = {k.removeprefix(PREFIX + "."): v for k, v in json.loads(metadata[METADATA_KEY]).items()
              if k.startswith(PREFIX + ".")}
    return tensors, config


def load_lora(module: nn.Module, directory: Union[str, Path]) -> nn.Module:
    """Add the adapter saved in ``directory`` to ``module`` (in place) and return it."""
    peft = _peft()
    tensors, fields = read_lora(directory)
    config = peft.LoraConfig(**fields)
    check_target_modules(module, sorted(config.target_modules))
    peft.inject_adapter_in_model(config, module)
    result = peft.set_peft_model_state_dict(module, tensors)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise UsageError(f"the LoRA in {directory} does not fit this model "
                         f"({len(missing)} adapter tensors missing, {len(unexpected)} unexpected)")
    module.requires_grad_(False)
    module._sdo_lora_config = config  # type: ignore[attr-defined]
    return module


def set_lora_enabled(module: nn.Module, enabled: bool) -> None:
    """Switch every LoRA layer of ``module`` on or off (off: the base model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(enabled)
