"""What fine-tuning trains: LoRA adapters, every denoiser weight, or the conditioning embeddings.

A target attaches to a loaded model, exposes its trainable tensors (for the optimizer, EMA and
checkpoints), switches the model back to its base for the KL regularizer, and exports the result
in the format users load:

``lora``       ``DIR/pytorch_lora_weights.safetensors`` (diffusers LoRA layout, see :mod:`.lora`)
``full``       ``DIR/unet/`` written by ``save_pretrained``
``embedding``  ``DIR/embeddings.safetensors`` (``weight``: the conditioning table)

:func:`load_finetuned` applies any of them to a freshly loaded model.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch
from torch import nn

from ..errors import UsageError
from . import lora

TARGETS = ("lora", "full", "embedding")
MANIFEST = "finetuned.json"


class Target:
    name = ""

    def __init__(self, model: Any):
        self.model = model

    def named_parameters(self) -> dict[str, nn.Parameter]:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return list(self.named_parameters().values())

    def state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.named_parameters().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_parameters()
        if set(state) != set(params):
            raise UsageError("the saved state does not match this target's parameters")
        with torch.no_grad():
            for k, p in params.items():
                if state[k].shape != p.shape:
                    raise UsageError(f"{k}: saved shape {tuple(state[k].shape)} != {tuple(p.shape)}")
                p.copy_(state[k])

    @contextlib.contextmanager
    def swapped(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """The trained tensors temporarily replaced by ``values`` (EMA weights, the base values)."""
        current = self.state()
        self.load_state(values)
        try:
            yield
        finally:
            self.load_state(current)

    def signature(self) -> dict[str, list[int]]:
        """Names and shapes of the trainable tensors: what a checkpoint must match to resume."""
        return {k: list(p.shape) for k, p in self.named_parameters().items()}

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        """The model as it was before fine-tuning (for the KL regularizer)."""
        raise NotImplementedError
        yield

    def export(self, directory: Union[str, Path]) -> Path:
        raise NotImplementedError

    def _manifest(self, directory: Path, **extra) -> None:
        from ..reporting import write_json

        write_json(directory / MANIFEST, {"target": self.name, **extra})


class LoraTarget(Target):
    name = "lora"

    def __init__(self, model: Any, rank: int = 4, alpha: Union[float, None] = None,
                 modules: Sequence[str] = lora.DEFAULT_TARGETS):
        super().__init__(model)
        lora.add_lora(model.unet, rank=rank, alpha=alpha, targets=modules)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.unet.named_parameters() if "lora_" in n}

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        lora.set_lora_enabled(self.model.unet, False)
        try:
            yield
        finally:
            lora.set_lora_enabled(self.model.unet, True)

    def export(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        lora.save_lora(self.model.unet, directory)
        self._manifest(directory)
        return directory


class FullTarget(Target):
    name = "full"

    def __init__(self, model: Any):
        super().__init__(model)
        self._base = copy.deepcopy(model.unet).requires_grad_(False)
        model.unet.requires_grad_(True)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.unet.named_parameters())

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        tuned, self.model.unet = self.model.unet, self._base
        try:
            yield
        finally:
            self.model.unet = tuned

    def export(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        self.model.unet.save_pretrained(directory / "unet")
        self._manifest(directory)
        return directory


class EmbeddingTarget(Target):
    name = "embedding"

    def __init__(self, model: Any):
        super().__init__(model)
        if not isinstance(getattr(model, "embeddings", None), nn.Embedding):
            raise UsageError(f"target embedding needs a model with a conditioning table; {type(model).__name__} has none")
        self._base = {"embeddings.weight": model.embeddings.weight.detach().clone()}
        model.embeddings.weight.requires_grad_(True)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {"embeddings.weight": self.model.embeddings.weight}

    def base(self) -> contextlib.AbstractContextManager:
        return self.swapped(self._base)

    def export(self, directory: Union[str, Path]) -> Path:
        from ..reporting import save_tensors

        directory = Path(directory)
        save_tensors(directory / "embeddings.safetensors", {"weight": self.model.embeddings.weight})
        self._manifest(directory)
        return directory


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


class PromptEmbeddingTarget(Target):
    """The encoded prompt embeddings of a text-to-image pipeline, one trainable set per prompt
    (every tensor the prompt's conditioning holds: token embeddings, pooled embeddings)."""

    name = "embedding"
    TRAINED = ("encoder_hidden_states", "pooled_projections", "added_cond_kwargs.text_embeds")

    def __init__(self, model: Any, prompts: Sequence[str]):
        super().__init__(model)
        prompts = list(dict.fromkeys(prompts))
        if not prompts or not prompts[0]:
            raise UsageError("target embedding needs prompts (this model is not prompt-conditioned)")
        model.encode_prompts(prompts)
        self.prompts = prompts
        self._params: dict[str, nn.Parameter] = {}
        self._base: dict[str, torch.Tensor] = {}
        for i, prompt in enumerate(prompts):
            for path, tensor in _flatten(model._cache[prompt]).items():
                if path in self.TRAINED:
                    param = nn.Parameter(tensor.detach().float().clone())
                    _assign(model._cache[prompt], path, param)
                    self._params[f"{i}.{path}"] = param
                    self._base[f"{i}.{path}"] = tensor.detach().float().clone()

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._params)

    def base(self) -> contextlib.AbstractContextManager:
        return self.swapped(self._base)

    def export(self, directory: Union[str, Path]) -> Path:
        from ..reporting import save_tensors

        directory = Path(directory)
        save_tensors(directory / "embeddings.safetensors", self._params)
        self._manifest(directory, prompts=self.prompts)
        return directory


def make_target(name: str, model: Any, *, rank: int = 4, alpha: Union[float, None] = None,
                modules: Sequence[str] = lora.DEFAULT_TARGETS, prompts: Sequence[Any] = ()) -> Target:
    if name == "lora":
        return LoraTarget(model, rank=rank, alpha=alpha, modules=modules)
    if name == "full":
        return FullTarget(model)
    if name == "embedding":
        if hasattr(model, "encode_prompts"):
            return PromptEmbeddingTarget(model, prompts)
        return EmbeddingTarget(model)
    raise UsageError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")


def load_finetuned(model: Any, directory: Union[str, Path]) -> Any:
    """Apply a fine-tuning result written by :meth:`Target.export` to ``model`` (in place)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{directory} holds no fine-tuning result ({MANIFEST} missing)")
    target = json.loads(manifest.read_text())["target"]
    if target == "lora":
        lora.load_lora(model.unet, directory)
    elif target == "full":
        tuned = type(model.unet).from_pretrained(directory / "unet", low_cpu_mem_usage=False)
        model.unet.load_state_dict(tuned.state_dict())
    elif target == "embedding" and hasattr(model, "encode_prompts"):
        tensors = load_file(directory / "embeddings.safetensors")
        prompts = json.loads(manifest.read_text())["prompts"]
        model.encode_prompts(prompts)
        for key, tensor in tensors.items():
            index, _, path = key.partition(".")
            cond = model._cache[prompts[int(index)]]
            _assign(cond, path, tensor.to(model.device, model.dtype))
    elif target == "embedding":
        weight = load_file(directory / "embeddings.safetensors")["weight"]
        if weight.shape != model.embeddings.weight.shape:
            raise UsageError(f"embedding table {tuple(weight.shape)} does not fit {tuple(model.embeddings.weight.shape)}")
        with torch.no_grad():
            model.embeddings.weight.copy_(weight)
    else:
        raise UsageError(f"unknown fine-tuning target {target!r} in {manifest}")
    return model
