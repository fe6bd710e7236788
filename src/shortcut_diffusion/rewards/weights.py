"""Published reward checkpoints into transformers modules: find the file, read it, load it.

The human-preference rewards ship as raw state dicts of their authors' code (open_clip, BLIP).
We rename their keys onto transformers' equivalent modules; these helpers do the parts that do not
depend on the architecture.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError


@functools.lru_cache(maxsize=None)
def _answers(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline() -> bool:
    """Whether only the local hub cache can be read: ``HF_HUB_OFFLINE`` is set, or the hub (or the
    HTTPS proxy) does not accept one quick connection. Checked once per process, before any
    download, so that an unreachable hub is one clear error instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True  # (the hub client reads it once, at import; honour it when set later too)
    from huggingface_hub import constants

    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), None)
    url = urlparse(proxy or constants.ENDPOINT)
    if not url.hostname:
        return False
    return not _answers(url.hostname, url.port or (443 if url.scheme == "https" else 80))


OFFLINE_HINT = "not in the local hub cache, and the hub is unreachable (no network, or HF_HUB_OFFLINE set)"


def checkpoint_file(path: Optional[str], repo: str, filename: str, what: str) -> Path:
    """``path`` if given, else ``filename`` from the hub repository ``repo`` (through the hub cache;
    only the cache when :func:`hub_offline`). A clear error when neither is there."""
    if path is None:
        from huggingface_hub import hf_hub_download

        offline = hub_offline()
        try:
            path = hf_hub_download(repo, filename, local_files_only=offline)
        except Exception as error:  # offline, no cache, no network: say what to do
            reason = OFFLINE_HINT if offline else str(error).splitlines()[0]
            raise UsageError(f"the {what} weights ({repo}/{filename}) are not available: {reason} "
                             "(download the file and pass checkpoint=PATH)") from error
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} checkpoint not found at {path}")
    return file


def read_state_dict(file: Path, key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch file (read with ``weights_only``); ``key`` picks a
    nested dict (``state_dict``) when present; a DDP ``module.`` prefix is removed."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(file)
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UsageError(f"could not read {file}: {type(error).__name__}: {error}") from error
    if key and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks ``{prefix}{i}.`` the state dict has."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def build_loaded(factory: Callable[[], nn.Module], state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``factory()`` built on the meta device (no random initialisation of a billion weights) and
    given ``state``'s tensors in float32; every parameter and persistent buffer must be in ``state``.
    Position-id buffers, which transformers does not save, are recreated."""
    with torch.device("meta"):
        module = factory()
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("position_ids")]
    if missing:
        raise UsageError(f"the {what} checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:3]} "
                         "(is it the right file?)")
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise UsageError(f"the {what} checkpoint has tensors of unexpected shapes, e.g. {wrong[0]}: "
                         f"{tuple(state[wrong[0]].shape)} instead of {tuple(expected[wrong[0]].shape)}")
    module.load_state_dict({k: state[k].float() for k in expected if k in state}, strict=False, assign=True)
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:
            if not name.endswith("position_ids"):
                raise UsageError(f"the {what} checkpoint lacks {name}")
            owner = module.get_submodule(name.rpartition(".")[0])
            fresh = torch.arange(buffer.shape[-1]).expand(buffer.shape).clone()
            owner.register_buffer(name.rpartition(".")[2], fresh, persistent=False)
    return module.eval().requires_grad_(False)
