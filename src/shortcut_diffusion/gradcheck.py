"""``sdo gradcheck``: every estimator's gradient on the same noise, against full backpropagation.

For one model, scheduler and differentiable reward, computes the gradient of the reward with
respect to the target (the initial latent, the conditioning embeddings, or the network weights)
with each estimator, and reports per estimator: cosine similarity and relative norm versus
``full``, network forward and backward evaluations, bytes saved for backward by the sampling
graph (reward excluded; measured, see :mod:`.diagnostics`) and seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .config import resolve_device
from .diagnostics import CountingDenoiser, SavedTensorMeter
from .errors import UsageError
from .estimators import get_estimator
from .models import load_model
from .rewards import get_reward, resolve_reward_spec
from .sampling import Mode, sample
from .schedulers import SCHEDULERS, make_scheduler

DEFAULT_ESTIMATORS = [
    "full",
    "checkpointed",
    "truncated:k=1",
    "truncated:k=all",
    "alignprop",
    "refl",
    "sdo",
    "sdo:keep=last",
]
TARGETS = ("latent", "cond", "weights")


@dataclass
class GradcheckConfig:
    model: str = field(default="digits", metadata={"help": "model to check: digits (the bundled testbed), toy (random, built in code) or a saved testbed directory"})
    scheduler: str = field(default="ddim", metadata={"help": "scheduler", "choices": list(SCHEDULERS)})
    eta: Optional[float] = field(default=None, metadata={"help": "DDIM eta (stochastic DDIM when > 0)"})
    steps: int = field(default=50, metadata={"help": "sampling steps"})
    batch: int = field(default=2, metadata={"help": "samples per batch"})
    target: str = field(default="latent", metadata={"help": "what the gradient is taken for", "choices": list(TARGETS)})
    reward: str = field(default="auto", metadata={"help": "differentiable reward (name[:arg]); auto: digit-match on the testbed, neg-mse otherwise"})
    estimators: list[str] = field(
        default_factory=lambda: list(DEFAULT_ESTIMATORS),
        metadata={"help": "estimator specs, name[:key=value,...]; full is always included first"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the latent, the noise and the estimators"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})


def _flat(grads: list[Optional[torch.Tensor]], like: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, like)])


def estimator_gradient(
    model: Any,
    scheduler: Any,
    estimator: Any,
    reward: Any,
    *,
    target: str,
    steps: int,
    batch: int,
    seed: int,
    device: torch.device,
    step_kwargs: Optional[dict] = None,
) -> dict[str, Any]:
    """One estimator's gradient of ``reward`` w.r.t. ``target``, with its measured cost.

    ``estimator=None`` measures plain sampling without grad (the floor every estimator pays).
    """
    with torch.set_grad_enabled(estimator is not None):
        return _estimator_gradient(model, scheduler, estimator, reward, target=target, steps=steps,
                                   batch=batch, seed=seed, device=device, step_kwargs=step_kwargs)


def _estimator_gradient(model, scheduler, estimator, reward, *, target, steps, batch, seed, device, step_kwargs):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *model.sample_shape), generator=gen).to(device)
    labels = torch.arange(batch) % model.num_classes
    cond = model.cond(labels.to(device)).detach()
    unet = model.unet
    unet.requires_grad_(target == "weights")
    if target == "latent":
        x.requires_grad_(True)
        params = [x]
    elif target == "cond":
        cond.requires_grad_(True)
        params = [cond]
    else:
        params = [p for p in unet.parameters()]
    counter = CountingDenoiser(model.denoiser)
    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    start = clock()
    with SavedTensorMeter(exclude=unet.parameters()) as meter:
        out = sample(counter, scheduler, x, steps=steps, estimator=estimator, cond=cond,
                     generator=seed + 1, step_kwargs=step_kwargs)
    sampled = clock()
    network_sampling = counter.forward_seconds
    images = model.decode(out.sample)
    loss = -reward(images, labels).sum()
    scored = clock()
    grads = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
    end = clock()
    seconds = end - start
    return {
        "gradient": _flat(list(grads), params).detach().double().cpu(),
        "reward": float(reward(images.detach(), labels).mean()),
        "nfe_forward": counter.forward_count,
        "nfe_backward": counter.backward_count,
        "grad_steps": out.plan.count(Mode.GRAD, Mode.CHECKPOINT) if estimator is not None else 0,
        "saved_bytes": meter.bytes,
        "seconds": seconds,
        # where the time goes: network forwards while sampling, the rest of sampling (scheduler
        # updates, graph bookkeeping), decode + reward, and backward (checkpoint recomputation included)
        "phases": {"network_forward": network_sampling, "sampler_other": sampled - start - network_sampling,
                   "decode_reward": scored - sampled, "backward": end - scored},
    }


def run_gradcheck(config: GradcheckConfig) -> dict[str, Any]:
    if config.target not in TARGETS:
        raise UsageError(f"unknown target {config.target!r}; choose one of {', '.join(TARGETS)}")
    if config.steps < 1 or config.batch < 1:
        raise UsageError(f"steps and batch must be positive, got steps={config.steps}, batch={config.batch}")
    specs = ["full"] + [s for s in config.estimators if s != "full"]
    estimators = [get_estimator(s, seed=config.seed) for s in specs]  # validate all before work
    device = resolve_device(config.device)
    model = load_model(config.model)
    model.to(device)
    scheduler = make_scheduler(config.scheduler, like=model.scheduler)
    step_kwargs = {} if config.eta is None else {"eta": config.eta}
    reward_spec = resolve_reward_spec(config.reward, model)
    reward = get_reward(reward_spec, shape=model.sample_shape, model=model)

    results, reference = [], None
    for spec, estimator in zip(specs, estimators):
        r = estimator_gradient(model, scheduler, estimator, reward, target=config.target,
                               steps=config.steps, batch=config.batch, seed=config.seed,
                               device=device, step_kwargs=step_kwargs)
        g = r.pop("gradient")
        if reference is None:
            reference = g
        ref_norm, norm = reference.norm(), g.norm()
        defined = bool(ref_norm > 0 and norm > 0)
        cosine = float(g @ reference / (norm * ref_norm)) if defined else None
        results.append({"estimator": spec, "cosine": cosine,
                        "rel_norm": float(norm / ref_norm) if ref_norm > 0 else None, **r})
    return {"steps": config.steps, "target": config.target, "model": config.model,
            "scheduler": config.scheduler, "reward": reward_spec, "batch": config.batch,
            "device": str(device), "results": results}


def format_table(report: dict[str, Any]) -> str:
    head = (f"gradcheck: model={report['model']} scheduler={report['scheduler']} steps={report['steps']} "
            f"target={report['target']} reward={report['reward']} batch={report['batch']} device={report['device']}")
    cols = ["estimator", "cosine", "rel_norm", "nfe_fwd", "nfe_bwd", "saved_MiB", "seconds"]
    rows = []
    for r in report["results"]:
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        rows.append([r["estimator"], fmt(r["cosine"], ".4f"), fmt(r["rel_norm"], ".3f"),
                     str(r["nfe_forward"]), str(r["nfe_backward"]),
                     f"{r['saved_bytes'] / 2**20:.3f}", f"{r['seconds']:.2f}"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    notes = "cosine n/a: the estimator's gradient for this target is exactly zero (gradients stop before it)."
    return "\n".join([head, line(cols), *map(line, rows), notes])


__all__ = ["DEFAULT_ESTIMATORS", "GradcheckConfig", "estimator_gradient", "format_table", "run_gradcheck"]
