"""``sdo gradcheck``: every estimator's gradient on the same noise, against full backpropagation.

For one model, scheduler and differentiable reward, computes the gradient of the reward with
respect to the target (the initial latent, the conditioning embeddings, or the network weights)
with each estimator, and reports per estimator: cosine similarity and relative norm versus
``full``, network forward and backward evaluations, bytes saved for backward by the sampling
graph (reward excluded; measured, see :mod:`.diagnostics`) and seconds.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

import torch

from shortcut_diffusion.meters import CountingDenoiser, SavedTensorMeter, model_weights
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.tasks.generate import detached, generate, reward_labels
from shortcut_diffusion.measure.gradcheck.anatomy import anatomy, drawn_plan, format_anatomy
from shortcut_diffusion.measure.gradcheck.config import DEFAULT_ESTIMATORS, GradcheckConfig
from shortcut_diffusion.gradients import get_method, loss_weighted
from shortcut_diffusion.models.base import DiffusionModel
from shortcut_diffusion.precision import Precision
from shortcut_diffusion.tasks.context import build_context


def _flat(grads: list[Optional[torch.Tensor]], like: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, like)])


def _differentiable_cond(cond: Any) -> tuple[Any, list[torch.Tensor]]:
    """A copy of ``cond`` whose floating tensors require grad, and those tensors."""
    if isinstance(cond, torch.Tensor):
        if not cond.is_floating_point():
            return cond, []
        leaf = cond.detach().clone().requires_grad_(True)
        return leaf, [leaf]
    if isinstance(cond, dict):
        out, leaves = {}, []
        for key, value in cond.items():
            out[key], found = _differentiable_cond(value)
            leaves += found
        return out, leaves
    return cond, []


def _variables(model: DiffusionModel, x: torch.Tensor, cond: Any, target: str) -> tuple[Any, list[torch.Tensor]]:
    """The conditioning to sample with and the tensors the gradient is taken for."""
    model.network.requires_grad_(target == "weights")
    if target == "latent":
        x.requires_grad_(True)
        return cond, [x]
    if target == "lora":  # the adapter a caller added to the network (``add_lora``), as fine-tuning trains it
        adapter = [p for name, p in model.network.named_parameters() if "lora_" in name]
        if not adapter:
            raise UsageError("target lora needs a LoRA adapter on the network")
        return cond, [p.requires_grad_(True) for p in adapter]
    if target == "cond":
        cond, leaves = _differentiable_cond(cond)
        if not leaves:
            raise UsageError("target cond needs a model with conditioning embeddings")
        return cond, leaves
    return cond, list(model.network.parameters())


def estimator_gradient(
    model: DiffusionModel,
    scheduler: Any,
    estimator: Any,
    reward: Any,
    *,
    target: str,
    steps: int,
    labels: list,
    seed: int,
    guidance: Optional[float] = None,
    step_kwargs: Optional[dict] = None,
    precision: Optional[Precision] = None,
    compile: bool = False,
    base: Optional[Any] = None,
) -> dict[str, Any]:
    """One estimator's gradient of ``reward`` w.r.t. ``target`` through :func:`generate` (the
    guided computation users run), with its measured cost.

    ``estimator=None`` measures plain sampling without grad (the floor every estimator pays). The
    loss is the method's fine-tuning loss (minus the reward, or its own: Adjoint Matching's, which
    needs ``base``, a context manager giving the denoiser fine-tuning started from).
    Memory is what the sampling graph saves for backward, or the most a method's own backward
    pass holds at once where that is more (the recomputing methods).
    """
    with torch.set_grad_enabled(estimator is not None):
        return _estimator_gradient(model, scheduler, estimator, reward, target=target, steps=steps, labels=labels,
                                   seed=seed, guidance=guidance, step_kwargs=step_kwargs, precision=precision,
                                   compile=compile, base=base)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _start(model: DiffusionModel, labels: list, seed: int, target: str) -> tuple[torch.Tensor, Any, list[torch.Tensor]]:
    """The initial latent (from ``seed``), the conditioning and the tensors the gradient is for."""
    x = torch.randn((len(labels), *model.sample_shape), generator=torch.Generator().manual_seed(seed)).to(model.device)
    return (x, *_variables(model, x, detached(model.conditioning(labels)), target))


def _estimator_gradient(model, scheduler, estimator, reward, *, target, steps, labels, seed, guidance, step_kwargs,
                        precision, compile, base):
    device = model.device
    x, cond, params = _start(model, labels, seed, target)
    counter: dict[str, CountingDenoiser] = {}

    def wrap(denoiser):
        counter["d"] = CountingDenoiser(denoiser)
        return counter["d"]

    clock = lambda: _clock(device)  # noqa: E731
    start = clock()
    with SavedTensorMeter(exclude=model_weights(model)) as meter:
        out = generate(model, x, labels, steps=steps, estimator=estimator, guidance=guidance, scheduler=scheduler,
                       cond=cond, seed=seed + 1, step_kwargs=step_kwargs, precision=precision, wrap=wrap, decode=False,
                       compile=compile)
    sampled, sampling_forward = clock(), counter["d"].forward_seconds
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        images = model.images(out.latents)
    rewards = reward(images, reward_labels(labels, device))
    if hasattr(estimator, "training_loss") and rewards.requires_grad:  # a method's own loss (Adjoint Matching)
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            loss = estimator.training_loss(out, rewards, base=base).sum()
    else:
        loss = -loss_weighted(rewards, out.info).sum()
    scored = clock()
    grads = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
    end = clock()
    model.network.requires_grad_(False)
    counted = counter["d"]
    return {
        "gradient": _flat(list(grads), params).detach().double().cpu(),
        "reward": float(-loss.detach()) / len(labels),
        "nfe_forward": counted.forward_count,
        "nfe_backward": counted.backward_count,
        "grad_steps": out.plan.graph_steps if estimator is not None else 0,
        "saved_bytes": max(meter.bytes, out.info.get("backward_peak_bytes", 0)),
        "seconds": end - start,
        # where the time goes: network forwards while sampling, the rest of sampling (scheduler
        # updates, graph bookkeeping), decode + reward, and backward (checkpoint recomputation and
        # recomputed states included)
        "phases": {"network_forward": sampling_forward,
                   "sampler_other": sampled - start - sampling_forward,
                   "decode_reward": scored - sampled, "backward": end - scored},
    }


def run_gradcheck(config: GradcheckConfig) -> dict[str, Any]:
    config.check()
    specs = ["full"] + [s for s in config.estimators if s != "full"]
    estimators = [get_method(s, seed=config.seed) for s in specs]  # validate all before work
    context = build_context(config, batch=config.batch, progress=not config.json)
    model, labels, scheduler, reward, precision = (context.model, context.labels, context.scheduler, context.reward,
                                                   context.precision)
    for method in estimators:
        method.check(scheduler, config.steps, step_kwargs=config.step_kwargs, task="gradcheck")
    plans = [(spec, drawn_plan(method, config.steps)) for spec, method in zip(specs, estimators)]  # before they draw

    def plan_gradient(source: Any) -> torch.Tensor:
        return estimator_gradient(model, scheduler, source, reward, target=config.target, steps=config.steps,
                                  labels=labels, seed=config.seed, guidance=config.guidance,
                                  step_kwargs=config.step_kwargs, precision=precision,
                                  compile=config.compile)["gradient"]

    results, reference = [], None
    for spec, estimator in zip(specs, estimators):
        r = estimator_gradient(model, scheduler, estimator, reward, target=config.target, steps=config.steps,
                               labels=labels, seed=config.seed, guidance=config.guidance,
                               step_kwargs=config.step_kwargs, precision=precision, compile=config.compile)
        g = r.pop("gradient")
        if reference is None:
            reference = g
        ref_norm, norm = reference.norm(), g.norm()
        defined = bool(ref_norm > 0 and norm > 0)
        cosine = float(g @ reference / (norm * ref_norm)) if defined else None
        results.append({"estimator": spec, "cosine": cosine,
                        "rel_norm": float(norm / ref_norm) if ref_norm > 0 else None, **r})
    report = {"steps": config.steps, "target": config.target, "model": config.model, "family": model.family,
              "scheduler": config.scheduler, "reward": context.reward_spec, "batch": config.batch,
              "guidance": model.guidance_scale if config.guidance is None else config.guidance,
              "dtype": config.dtype, "device": str(context.device), "results": results}
    if config.anatomy:
        report["anatomy"] = anatomy(plan_gradient, plans, config.steps)
    return report


def format_table(report: dict[str, Any]) -> str:
    head = (f"gradcheck: model={report['model']} scheduler={report['scheduler']} steps={report['steps']} "
            f"target={report['target']} reward={report['reward']} batch={report['batch']} "
            f"guidance={report['guidance']} dtype={report['dtype']} device={report['device']}")
    cols = ["estimator", "cosine", "rel_norm", "nfe_fwd", "nfe_bwd", "saved_MiB", "seconds"]
    rows = []
    for r in report["results"]:
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        rows.append([r["estimator"], fmt(r["cosine"], ".4f"), fmt(r["rel_norm"], ".3f"),
                     str(r["nfe_forward"]), str(r["nfe_backward"]),
                     f"{r['saved_bytes'] / 2**20:.3f}", f"{r['seconds']:.2f}"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    notes = ["cosine n/a: the estimator's gradient for this target is exactly zero (gradients stop before it)."]
    names = {r["estimator"] for r in report["results"]}
    if "adjoint" in names:
        notes.append("adjoint: DDIM (eta 0) on the scheduler's noise schedule, states recomputed by DDIM inversion "
                     "(approximate); saved_MiB is the peak held at once.")
    if "doodl" in names:
        notes.append("doodl differentiates EDICT's coupled sampler, not the scheduler's: its cosine compares two chains "
                     "(against backpropagation through EDICT it is exact); saved_MiB is the peak held at once.")
    anatomy_table = ["", format_anatomy(report["anatomy"])] if "anatomy" in report else []
    return "\n".join([head, line(cols), *map(line, rows), *notes, *anatomy_table])


__all__ = ["DEFAULT_ESTIMATORS", "GradcheckConfig", "estimator_gradient", "format_table", "run_gradcheck"]
