"""What fine-tuning trains: LoRA adapters, every denoiser weight, or the conditioning embeddings.

A target attaches to a loaded model, exposes its trainable tensors (for the optimizer, EMA and
checkpoints), switches the model back to its base for the KL regularizer, and exports the result
in the format users load:

``lora``       ``DIR/pytorch_lora_weights.safetensors`` (diffusers LoRA layout, see :mod:`.lora`)
``full``       ``DIR/unet/`` written by ``save_pretrained`` (the network, a UNet or a transformer)
``embedding``  ``DIR/embeddings.safetensors`` (``weight``: the conditioning table of the built-in
               models; ``"{i}.encoder_hidden_states"`` etc.: prompt i's embeddings on pipelines)

Every export is float32, whatever ``--dtype`` the frozen weights ran in: trained tensors keep
float32 master copies, and diffusers' own training scripts save LoRA and full weights in float32
too (cast them with ``.to(torch.float16)`` after loading if you want half-size files).

:func:`load_finetuned` applies any of them to a freshly loaded model.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from shortcut_diffusion.options.choices import FINETUNE_TARGETS
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.reporting import save_tensors, write_json
from shortcut_diffusion.io.runfiles import write_dir
from shortcut_diffusion.precision import master_copies
from shortcut_diffusion.tasks.finetune import lora
from shortcut_diffusion.tasks.finetune.sharding import full, unsharded_copy

TARGETS = FINETUNE_TARGETS
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
        """The trained tensors, whole (a collective when they are sharded: every process calls it)."""
        return {k: full(p.detach()).clone() for k, p in self.named_parameters().items()}

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
        write_json(directory / MANIFEST, {"target": self.name, **extra})


class LoraTarget(Target):
    name = "lora"

    def __init__(self, model: Any, rank: int = 4, alpha: Union[float, None] = None,
                 modules: Optional[Sequence[str]] = None):
        super().__init__(model)
        targets = modules or model.lora_modules
        master_copies(lora.add_lora(model.network, rank=rank, alpha=alpha, targets=targets))

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.network.named_parameters() if "lora_" in n}

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        lora.set_lora_enabled(self.model.network, False)
        try:
            yield
        finally:
            lora.set_lora_enabled(self.model.network, True)

    def export(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        lora.save_lora(self.model.network, directory)
        self._manifest(directory)
        return directory


class FullTarget(Target):
    """Every weight of the network, trained in float32 (the master copy); a frozen copy in the
    model's dtype is the base for the KL regularizer."""

    name = "full"

    def __init__(self, model: Any, keep_base: bool = True):
        super().__init__(model)
        self._base = copy.deepcopy(model.network).requires_grad_(False) if keep_base else None
        model.network.float().requires_grad_(True)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.network.named_parameters())

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        if self._base is None:
            raise UsageError("this full fine-tuning target keeps no frozen copy of the base network")
        tuned = self.model.network
        self.model.set_network(self._base)
        try:
            yield
        finally:
            self.model.set_network(tuned)

    def export(self, directory: Union[str, Path], state: Optional[dict[str, torch.Tensor]] = None) -> Path:
        """Save the network; ``state``: its whole state dict, when the network itself is sharded."""
        directory = Path(directory)
        network = self.model.network if state is None else unsharded_copy(self.model.network, state)
        write_dir(directory / "unet", network.save_pretrained)
        self._manifest(directory)
        return directory


class EmbeddingTarget(Target):
    """The conditioning embeddings of the training conditions: the class-embedding table of the
    built-in models, the token and pooled prompt embeddings of each prompt of a pipeline."""

    name = "embedding"

    def __init__(self, model: Any, labels: Sequence[Any]):
        super().__init__(model)
        self.labels = list(dict.fromkeys(labels))
        self._params = model.embedding_parameters(self.labels)
        self._base = {k: p.detach().clone() for k, p in self._params.items()}

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._params)

    def base(self) -> contextlib.AbstractContextManager:
        return self.swapped(self._base)

    def export(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        save_tensors(directory / "embeddings.safetensors", self._params)
        self._manifest(directory, labels=self.labels)
        return directory


def make_target(name: str, model: Any, *, rank: int = 4, alpha: Union[float, None] = None,
                modules: Optional[Sequence[str]] = None, labels: Sequence[Any] = (), keep_base: bool = True) -> Target:
    """The target ``name`` attached to ``model``; trained tensors are float32 master copies.
    ``keep_base=False``: full fine-tuning keeps no frozen copy of the network (no KL penalty)."""
    if name == "lora":
        return LoraTarget(model, rank=rank, alpha=alpha, modules=modules)
    if name == "full":
        return FullTarget(model, keep_base=keep_base)
    if name == "embedding":
        return EmbeddingTarget(model, labels)
    raise UsageError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")


def load_finetuned(model: Any, directory: Union[str, Path]) -> Any:
    """Apply a fine-tuning result written by :meth:`Target.export` to ``model`` (in place)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{directory} holds no fine-tuning result ({MANIFEST} missing)")
    info = json.loads(manifest.read_text())
    target = info["target"]
    if target == "lora":
        lora.load_lora(model.network, directory)
    elif target == "full":
        tuned = type(model.network).from_pretrained(directory / "unet", low_cpu_mem_usage=False)
        model.network.load_state_dict(tuned.state_dict())
    elif target == "embedding":
        tensors = load_file(directory / "embeddings.safetensors")
        model.load_embeddings(tensors, info.get("labels", info.get("prompts", [])))
    else:
        raise UsageError(f"unknown fine-tuning target {target!r} in {manifest}")
    return model
