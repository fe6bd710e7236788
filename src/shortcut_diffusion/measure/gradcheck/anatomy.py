"""Gradient anatomy: each estimator's gradient w.r.t. the latent split into two parts.

Sampling is ``x_{i+1} = a_i x_i + b_i eps_i``: the final sample depends on the latent through the
scheduler's linear updates and through every network output ``eps_i``. For an estimator whose
plan keeps the network graph at some steps:

- the **linear-path part** is the gradient with every network output detached (each step of the
  plan that keeps a graph in ``Mode.DETACH``; stopped steps stay stopped): the chain of the
  scheduler's coefficients alone, identical for full and SDO;
- the **network part** is the estimator's gradient minus it: what the network Jacobians add.

For full backpropagation the network part is also split per step: the gradient that keeps step
``j`` alone (SDO keeping step j) minus the linear path. Their sum is full's network part up to the
terms where two or more Jacobians meet.

The parts are measured, not modelled: every gradient comes from the caller's ``gradient(plan)``
(:func:`anatomy`), the one sampling loop run with that plan.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from shortcut_diffusion.sampling.loop import GRAPH_MODES, Mode, Plan


def linear_plan(plan: Plan) -> Plan:
    """``plan`` with every step that keeps a network graph detached (its output a constant)."""
    return Plan(tuple(Mode.DETACH if m in GRAPH_MODES else m for m in plan.modes), plan.x0_at)


def one_step_plan(plan: Plan, step: int) -> Plan:
    """The linear path of ``plan`` with step ``step`` keeping its own mode (its Jacobian alone)."""
    modes = list(linear_plan(plan).modes)
    modes[step] = plan.modes[step]
    return Plan(tuple(modes), plan.x0_at)


def drawn_plan(method: Any, steps: int) -> Optional[Plan]:
    """The plan ``method`` draws for its next call (from a copy: its own stream is untouched), or
    None for a method without per-step plans (the adjoint, DOODL differentiate other chains)."""
    return method.next_plan(steps)


def _cos(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    na, nb = a.norm(), b.norm()
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else None


def _rel(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    return float(a.norm() / b.norm()) if b.norm() > 0 else None


def parts(estimate: torch.Tensor, linear: torch.Tensor, full: torch.Tensor) -> dict[str, Optional[float]]:
    """Norms (relative to full's) and cosines of an estimate, its linear part and its network part."""
    network = estimate - linear
    return {"cosine": _cos(estimate, full), "rel_norm": _rel(estimate, full),
            "linear_rel_norm": _rel(linear, full), "linear_cosine": _cos(linear, full),
            "network_rel_norm": _rel(network, full), "network_cosine": _cos(network, full),
            "network_linear_cosine": _cos(network, linear), "network_over_linear": _rel(network, linear)}


def anatomy(gradient: Callable[[Plan], torch.Tensor], plans: Sequence[tuple[str, Optional[Plan]]], steps: int,
            per_step: bool = True) -> dict[str, Any]:
    """The anatomy of each estimator, given as ``(spec, the plan it drew)`` (:func:`drawn_plan`),
    over ``steps`` sampling steps.

    ``gradient(plan)`` is the flattened gradient w.r.t. the latent when sampling with ``plan``.
    Returns ``{"estimators": [row per estimator], "full_steps": [row per step] or []}``; an
    estimator without per-step plans (plan None) gets a row of None.
    """
    cache: dict[Plan, torch.Tensor] = {}

    def grad(plan: Plan) -> torch.Tensor:
        if plan not in cache:
            cache[plan] = gradient(plan).detach().double().flatten()
        return cache[plan]

    full_plan = Plan.uniform(Mode.GRAD, steps)
    full, linear_full = grad(full_plan), grad(linear_plan(full_plan))
    rows = []
    for spec, plan in plans:
        if plan is None:
            rows.append({"estimator": spec, **{k: None for k in parts(full, full, full)}})
            continue
        rows.append({"estimator": spec, "kept_steps": plan.graph_steps,
                     **parts(grad(plan), grad(linear_plan(plan)), full)})
    return {"estimators": rows, "full_steps": _per_step(grad, full_plan, full, linear_full) if per_step else []}


def _per_step(grad: Callable[[Plan], torch.Tensor], full_plan: Plan, full: torch.Tensor,
              linear: torch.Tensor) -> list[dict[str, Any]]:
    """Full's network part step by step, and the sum of those one-step parts (last row, step None)."""
    network, rows, total = full - linear, [], torch.zeros_like(full)
    for step in range(len(full_plan.modes)):
        part = grad(one_step_plan(full_plan, step)) - linear
        total += part
        rows.append({"step": step, "rel_norm": _rel(part, full), "cosine": _cos(part, full),
                     "network_cosine": _cos(part, network)})
    rows.append({"step": None, "rel_norm": _rel(total, full), "cosine": _cos(total, full),
                 "network_cosine": _cos(total, network)})
    return rows


def format_anatomy(report: dict[str, Any]) -> str:
    """The anatomy as text tables: per estimator, then full's network part per step."""
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    cols = ["estimator", "cos_full", "linear/full", "cos(linear,full)", "network/full", "cos(network,full)",
            "cos(network,linear)", "network/linear"]
    keys = ["cosine", "linear_rel_norm", "linear_cosine", "network_rel_norm", "network_cosine",
            "network_linear_cosine", "network_over_linear"]
    rows = [[r["estimator"], *(fmt(r[k], ".4f" if "cos" in k else ".3f") for k in keys)] for r in report["estimators"]]
    lines = ["gradient anatomy (w.r.t. the latent; norms relative to full's): linear = every network output "
             "detached, network = estimator - linear", *_table(cols, rows)]
    if report["full_steps"]:
        step_rows = [["sum" if r["step"] is None else str(r["step"]), fmt(r["rel_norm"], ".4f"),
                      fmt(r["cosine"], ".4f"), fmt(r["network_cosine"], ".4f")] for r in report["full_steps"]]
        lines += ["", "full's network part per step j (keep step j alone, minus the linear path); sum: all steps",
                  *_table(["step", "norm/full", "cos(part,full)", "cos(part,full network)"], step_rows)]
    return "\n".join(lines)


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(cols), *map(line, rows)]
