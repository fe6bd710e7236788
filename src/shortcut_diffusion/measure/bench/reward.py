"""Time-to-reward: the wall-clock each estimator needs, on the latent and the fine-tuning task.

Every estimator gets the same seeds, the same starting point and the same wall-clock budget.
Rewards are measured the same way for all: on plainly sampled images (for latents, the iterates
recorded during the run are re-sampled afterwards, outside the clock; for fine-tuning, the
periodic evaluations on fixed noise). The threshold is 95% of the best improvement over the start
that any estimator reached by the end of its budget; ``seconds_to_95`` is the training wall-clock
at which an estimator first reached it (None: never).

On the latent task a second, matched comparison: the reward level ``full`` ends its budget at
(its last re-sampled iterate). ``seconds_to_full_final`` is when each estimator first reaches that
level, so ``sdo``/``full`` at it is a measured ratio even when ``full`` never gets near the 95%
threshold; ``digits_fd_at_full_final`` is the digits-FD of the iterate that first reached it, the
sample quality at equal reward.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from shortcut_diffusion.io import reporting

LATENT_ESTIMATORS = ["full", "checkpointed", "truncated:k=1", "alignprop", "refl", "sdo"]
FINETUNE_ESTIMATORS = ["checkpointed", "truncated:k=1", "alignprop", "refl", "sdo:keep=random"]


def _time_to(curve: Sequence[tuple[float, float]], threshold: float) -> Optional[float]:
    return next((t for t, r in curve if r >= threshold), None)


def _finish(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the shared threshold and each row's time to reach it."""
    start = rows[0]["start_reward"]
    best = max(r["final_reward"] for r in rows)
    threshold = start + 0.95 * (best - start)
    for r in rows:
        r["threshold"] = threshold
        r["seconds_to_95"] = _time_to(r["curve"], threshold)
    return rows


def latent_time_to_reward(model: Any, reward_spec: str, cond: int, *, estimators: Sequence[str] = LATENT_ESTIMATORS,
                          seconds: float = 60.0, steps: int = 50, batch: int = 8, lr: float = 0.15,
                          seed: int = 0, clock: Optional[Callable[[], float]] = None) -> list[dict[str, Any]]:
    """Latent optimization of the initial noise for ``seconds`` per estimator (or recomputing
    method, or ``freedom`` guided pass: :mod:`.latent_methods`), read from ``clock`` (default
    ``time.perf_counter``)."""
    from shortcut_diffusion.rewards import get_reward
    from shortcut_diffusion.models.testbed import metrics
    from shortcut_diffusion.measure.bench.latent_methods import run_method

    reward = get_reward(reward_spec, model=model, shape=model.image_shape)
    labels = torch.full((batch,), cond)
    device = model.device
    rows, iterate_images = [], []
    target = _target_class(reward_spec)
    for spec in estimators:
        run = run_method(model, reward, labels, spec, seconds=seconds, steps=steps, lr=lr, seed=seed, clock=clock)
        with torch.no_grad():
            scored = [float(reward(images.to(device), labels.to(device)).mean()) for _, images in run.iterates]
            start_reward = float(reward(run.start_images.to(device), labels.to(device)).mean())
            final_reward = float(reward(run.images.to(device), labels.to(device)).mean())
        curve = [(0.0, start_reward)] + [(t, r) for (t, _), r in zip(run.iterates, scored)]
        row = {"task": "latent", "reward": reward_spec, "estimator": spec, "budget_seconds": seconds,
               "start_reward": start_reward, "final_reward": final_reward, "iterations": run.iterations,
               "seconds_per_iter": run.seconds_per_iter, "saved_bytes": run.saved_bytes, "curve": curve, **run.extra}
        if model.classifier is not None:
            row["digits_fd"] = metrics.digits_fd(model.classifier, run.images)
            row["start_digits_fd"] = metrics.digits_fd(model.classifier, run.start_images)
            if target is not None:
                row["class_fd"] = metrics.digits_fd(model.classifier, run.images, "all", [target])
            row.update(_panel(model, run.images, cond if target is None else target))
        rows.append(row)
        iterate_images.append(torch.stack([images.cpu() for _, images in run.iterates]))
    _match_full(rows, iterate_images, model.classifier, target)
    return _finish(rows)


def _panel(model: Any, images: torch.Tensor, goal: int) -> dict[str, Any]:
    """The judge panel's readings (never rewards) of the goal class, realism and saturation."""
    from shortcut_diffusion.models.testbed.panel import panel_report

    report = panel_report(model, images, goal)
    if report is None:
        return {}
    return {"panel": {key: report[key] for key in ("judges", "read_by_judge", "read_by_all", "count", "realism",
                                                    "saturation")}, "goal": goal}


def _target_class(reward_spec: str) -> Optional[int]:
    """The class a ``digit-class:K`` or ``adversarial:K`` reward steers to (None for other rewards)."""
    name, _, arg = reward_spec.partition(":")
    goal = arg.split(",")[0]
    return int(goal) if name in ("digit-class", "adversarial") and goal.isdigit() else None


def real_fd_spread(classifier: Any, target: int, batch: int, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the class-FD of ``batch`` real held-out digits of class
    ``target`` against all real digits of that class: what ``batch`` perfect samples would score."""
    from shortcut_diffusion.models.testbed import data, metrics

    held = data.load("held_out")
    real = held.images[held.labels == target]
    g = torch.Generator().manual_seed(seed)
    values = [metrics.digits_fd(classifier, real[torch.randperm(len(real), generator=g)[:batch]], "all", [target])
              for _ in range(draws)]
    return statistics.mean(values), statistics.stdev(values)


def _match_full(rows: list[dict[str, Any]], iterate_images: list[torch.Tensor], classifier: Any,
                target: Optional[int]) -> None:
    """Time to ``full``'s final level, and digits-FD of the iterate that first reached it."""
    from shortcut_diffusion.models.testbed import metrics

    full = next((r for r in rows if r["estimator"] == "full"), None)
    if full is None:
        return
    level = full["curve"][-1][1]
    for row, images in zip(rows, iterate_images):
        row["full_final_level"] = level
        # curve[0] is the start (no iterate); curve[i] is iterate i - 1
        hit = next((i for i, (_, r) in enumerate(row["curve"]) if r >= level), None)
        row["seconds_to_full_final"] = None if hit is None else row["curve"][hit][0]
        if classifier is not None and hit:
            row["digits_fd_at_full_final"] = metrics.digits_fd(classifier, images[hit - 1])
            if target is not None:
                row["class_fd_at_full_final"] = metrics.digits_fd(classifier, images[hit - 1], "all", [target])


def finetune_time_to_reward(reward_spec: str, *, estimators: Sequence[str] = FINETUNE_ESTIMATORS, minutes: float = 2.0,
                            out: Path, base: Any = None) -> list[dict[str, Any]]:
    """LoRA fine-tuning for ``minutes`` of training per estimator (evaluation excluded)."""
    from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune

    base = base or FinetuneConfig(target="lora", steps=25, batch=8, eval_every=10, eval_per_class=10,
                                  checkpoint_every=0, progress=False, seed=0)
    rows = []
    for spec in estimators:
        run_dir = Path(out) / reward_spec.replace(":", "_") / spec.replace(":", "_").replace("=", "-")
        summary = run_finetune(replace(base, reward=reward_spec, estimator=spec, minutes=minutes, max_steps=None,
                                       out=str(run_dir)))
        evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines() if line]
        evals = [e for e in evals if not e.get("final")]
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        before, after = summary["before"], summary["after"]
        rows.append({
            "task": "finetune", "reward": reward_spec, "estimator": spec, "budget_seconds": minutes * 60,
            "start_reward": before["reward"], "final_reward": after["reward"],
            "start_digits_fd": before.get("digits_fd"), "digits_fd": after.get("digits_fd"),
            "accuracy": after.get("accuracy"), "diversity": after.get("diversity"),
            "start_diversity": before.get("diversity"),
            "iterations": summary["steps"], "seconds_per_iter": statistics.median(r["seconds"] for r in steps),
            "curve": [(e["wall_clock"], e["reward"]) for e in evals],
            "fd_curve": [(e["wall_clock"], e.get("digits_fd")) for e in evals],
        })
    return _finish(rows)


def markdown(rows: list[dict[str, Any]], reference: str) -> str:
    """One table per (task, reward), with ratios of time-to-95% to ``reference``'s."""
    lines = []
    for task, reward in dict.fromkeys((r["task"], r["reward"]) for r in rows):
        group = [r for r in rows if (r["task"], r["reward"]) == (task, reward)]
        first = group[0]
        ref = next((r for r in group if r["estimator"] == reference), None)
        fd = first.get("start_digits_fd")
        lines += [f"### {task}, reward {reward}: {first['budget_seconds']:g} s of optimization per estimator", "",
                  f"Start: reward {first['start_reward']:.4f}" + (f", digits-FD {fd:.2f}" if fd is not None else "")
                  + f". Threshold (95% of the best improvement): {first['threshold']:.4f}.", "",
                  f"| estimator | final reward | digits-FD | class-FD | {_panel_header(first)}iterations | s/iter | "
                  f"saved MiB (peak) | time to 95% | x {reference} |",
                  "|---|---|---|---|" + "---|" * _panel_header(first).count("|") + "---|---|---|---|---|"]
        for r in group:
            t95 = r["seconds_to_95"]
            ratio = (f"{t95 / ref['seconds_to_95']:.2f}" if t95 is not None and ref and ref["seconds_to_95"] else "-")
            fd = f"{r['digits_fd']:.2f}" if r.get("digits_fd") is not None else "-"
            cfd = f"{r['class_fd']:.2f}" if r.get("class_fd") is not None else "-"
            saved = f"{r['saved_bytes'] / 2**20:.1f}" if r.get("saved_bytes") is not None else "-"
            lines.append(f"| {r['estimator']} | {r['final_reward']:.4f} | {fd} | {cfd} | {_panel_cells(r)}{r['iterations']} | "
                         f"{r['seconds_per_iter']:.2f} | {saved} | {'not reached' if t95 is None else f'{t95:.1f} s'} | {ratio} |")
        lines.append("")
        if "full_final_level" in first:
            lines.append(_matched_table(group))
    return "\n".join(lines)


def _panel_header(row: dict[str, Any]) -> str:
    """The panel's columns (none for a model without a panel): each judge, all of them, realism, saturation."""
    if "panel" not in row:
        return ""
    judges = row["panel"]["judges"]
    return (f"all {len(judges)} judges read {row['goal']} | " + " | ".join(judges) + " | realism | saturation | ")


def _panel_cells(row: dict[str, Any]) -> str:
    if "panel" not in row:
        return ""
    p = row["panel"]
    return (f"{p['read_by_all']}/{p['count']} | " + " | ".join(f"{p['read_by_judge'][j]}/{p['count']}" for j in p["judges"])
            + f" | {p['realism']:.2f}x | {p['saturation']:.0%} | ")


def _matched_table(group: list[dict[str, Any]]) -> str:
    """Time to ``full``'s final reward level and the digits-FD at that level, per estimator."""
    full = next(r for r in group if r["estimator"] == "full")
    lines = [f"Equal reward: the level full ends at ({full['full_final_level']:.4f}), when each estimator first "
             "reaches it, and the digits-FD (against all real digits) and class-FD (against real digits of the target class) "
             "of that iterate.", "",
             "| estimator | time to full's final reward | x full | digits-FD there | class-FD there |",
             "|---|---|---|---|---|"]
    for r in group:
        t = r.get("seconds_to_full_final")
        ratio = f"{t / full['seconds_to_full_final']:.2f}" if t is not None and full["seconds_to_full_final"] else "-"
        fd, cfd = r.get("digits_fd_at_full_final"), r.get("class_fd_at_full_final")
        lines.append(f"| {r['estimator']} | {'not reached' if t is None else f'{t:.1f} s'} | {ratio} | "
                     f"{'-' if fd is None else f'{fd:.2f}'} | {'-' if cfd is None else f'{cfd:.2f}'} |")
    return "\n".join(lines) + "\n"


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's latent-task targets: sdo <= 0.10x full's time to 95%, reward and digits-FD no worse."""
    out = []
    for reward in dict.fromkeys(r["reward"] for r in rows if r["task"] == "latent"):
        by = {r["estimator"]: r for r in rows if r["task"] == "latent" and r["reward"] == reward}
        sdo, full = by.get("sdo"), by.get("full")
        if not (sdo and full):
            continue
        if sdo["seconds_to_95"] is None:
            out.append(f"- latent {reward}: sdo did not reach the threshold (target missed)")
        elif full["seconds_to_95"] is None:
            out.append(f"- latent {reward}: sdo reached the threshold in {sdo['seconds_to_95']:.1f} s; full never did "
                       f"within {full['budget_seconds']:g} s (ratio below {sdo['seconds_to_95'] / full['budget_seconds']:.2f}x: "
                       f"{'met' if sdo['seconds_to_95'] / full['budget_seconds'] <= 0.10 else 'not shown'})")
        else:
            ratio = sdo["seconds_to_95"] / full["seconds_to_95"]
            out.append(f"- latent {reward}: time to 95% sdo/full = {ratio:.2f}x (target <= 0.10x: "
                       f"{'met' if ratio <= 0.10 else f'missed by {ratio - 0.10:.2f}x'})")
        if sdo.get("seconds_to_full_final") is not None and full.get("seconds_to_full_final"):
            ratio = sdo["seconds_to_full_final"] / full["seconds_to_full_final"]
            out.append(f"- latent {reward}: time to full's final reward ({full['full_final_level']:.4f}) sdo/full = "
                       f"{ratio:.2f}x ({sdo['seconds_to_full_final']:.1f} s vs {full['seconds_to_full_final']:.1f} s; "
                       f"target <= 0.10x: {'met' if ratio <= 0.10 else f'missed by {ratio - 0.10:.2f}x'})")
            out += _fd_lines(reward, sdo, full, "_at_full_final", " at that equal reward")
        out.append(f"- latent {reward}: final reward sdo {sdo['final_reward']:.4f} vs full {full['final_reward']:.4f} "
                   f"({'met' if sdo['final_reward'] >= full['final_reward'] else 'missed'})")
        out += _fd_lines(reward, sdo, full, "", "")
    return out


def _fd_lines(reward: str, sdo: dict[str, Any], full: dict[str, Any], suffix: str, where: str) -> list[str]:
    """digits-FD and class-FD of sdo against full (lower is better), where both were measured."""
    lines = []
    for key, label in (("digits_fd", "digits-FD"), ("class_fd", "class-FD")):
        a, b = sdo.get(key + suffix), full.get(key + suffix)
        if a is not None and b is not None:
            lines.append(f"- latent {reward}: {label}{where} sdo {a:.2f} vs full {b:.2f} ({'met' if a <= b else 'missed'})")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["task"], r["reward"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), dpi=100, squeeze=False)
    for ax, (task, reward) in zip(axes[0], groups):
        for r in (r for r in rows if (r["task"], r["reward"]) == (task, reward)):
            ax.plot([t for t, _ in r["curve"]], [v for _, v in r["curve"]], marker="." if task == "finetune" else None,
                    label=r["estimator"])
        threshold = next(r for r in rows if (r["task"], r["reward"]) == (task, reward))["threshold"]
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{task}: {reward}")
        ax.set_xlabel("wall-clock (s)")
        ax.set_ylabel("reward (plain sampling)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    reporting.save_figure(fig, path)
