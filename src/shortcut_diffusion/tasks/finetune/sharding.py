"""Full fine-tuning of a network that does not fit one device: FSDP (``--fsdp``).

Under ``accelerate launch`` with several processes, ``--target full --fsdp`` shards the network
with PyTorch's FSDP (``torch.distributed.fsdp.fully_shard``, FSDP2): every block of every
``ModuleList`` (the UNet's down/up blocks, a transformer's blocks) and the network as a whole
hold 1/world of the weights, their gradients and AdamW's state on each process; a block's
weights are gathered for its forward and backward and freed after. Gradients are summed over the
processes (each loss is already divided by the global batch), as in the data-parallel path, so
2 processes of batch B train like 1 process of batch 2B.

What needs every weight in one place (the evaluation's sampling, the export) runs on every
process, with the main process alone writing. Not combined with FSDP here: LoRA and embedding
targets (small: run them data parallel), fp16 (its loss scaling would need the overflow check
agreed across shards: use bf16), EMA, the KL penalty (a frozen full copy), early stopping's best
weights and resumable checkpoints (``--checkpoint-every 0``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shortcut_diffusion.errors import UsageError


def check_fsdp(config: Any) -> None:
    """Refuse, before any work, what FSDP is not combined with here (see the module docstring)."""
    problems = []
    if config.target != "full":
        problems.append(f"--target {config.target} (LoRA and embeddings are small: leave out --fsdp, the "
                        "processes then train data parallel)")
    if config.dtype == "fp16":
        problems.append("--dtype fp16 (use bf16)")
    for flag, value in (("--ema", config.ema), ("--kl-weight", config.kl_weight), ("--early-stop", config.early_stop),
                        ("--checkpoint-every", config.checkpoint_every), ("--resume", config.resume)):
        if value:
            problems.append(f"{flag} (pass {'0' if flag != '--resume' else 'no --resume'})")
    if problems:
        raise UsageError("--fsdp shards full fine-tuning; it is not combined with " + "; ".join(problems))


def shard(network: nn.Module) -> int:
    """Shard ``network`` in place over the default process group; returns the number of units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    world = torch.distributed.get_world_size()
    device = next(network.parameters()).device
    mesh = init_device_mesh(device.type, (world,))
    for module in reversed(list(network.modules())):  # inner blocks first, as nested FSDP needs
        if isinstance(module, nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block, mesh=mesh)
    fully_shard(network, mesh=mesh)
    units = [m for m in network.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_gradient_divide_factor(1.0)  # a sum over processes, not a mean
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-multiplied sum
    return len(units)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every process must call it), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """``network.state_dict()`` with every shard gathered (a collective)."""
    return {k: full(v.detach()) for k, v in network.state_dict().items()}


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of the gradients of ``params``, sharded or not."""
    squares = [full(p.grad.detach().float().square().sum()) for p in params if p.grad is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def unsharded_copy(network: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain module of ``network``'s class and config holding ``state`` (for the export)."""
    if not hasattr(network, "from_config"):
        raise UsageError("--fsdp exports diffusers models only")
    plain = type(network).from_config(network.config)
    plain.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    return plain
