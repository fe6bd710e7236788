"""``sdo bench``: the cost of one optimization iteration vs the number of sampling steps.

For every estimator and for plain no-grad sampling (``sampling``, the floor: every iteration must
at least sample), at every N: seconds per iteration (median of repeats, after one warm-up run),
network forward/backward evaluations, bytes saved for backward by the sampling graph, and peak
memory of the process (peak RSS on the CPU, ``max_memory_allocated`` on CUDA). Each
configuration runs in its own process so that peak memory is its own; all run in one invocation
so that ratios are side by side. One iteration = sample with the estimator, score with the reward,
backpropagate to the initial latent.

Outputs in ``--out``: ``results.csv``, ``report.md`` (tables, ratios, the targets of the cost
claim and whether they are met, the exact command), ``cost_vs_steps.png``.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

from shortcut_diffusion.io import reporting, rundir
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.measure.bench.config import DEFAULT_ESTIMATORS, BenchConfig  # noqa: F401 (re-exported)

COLUMNS = ["model", "task", "estimator", "steps", "batch", "seconds_per_iter", "paired_sampling_seconds",
           "nfe_forward", "nfe_backward", "saved_bytes", "peak_mem_mb", "cosine_to_full", "device", "threads", "compile", "dtype",
           "guidance", "resolution",
           "network_forward_s", "sampler_other_s", "decode_reward_s", "backward_s"]
PHASES = {"network_forward": "network forwards", "sampler_other": "rest of sampling",
          "decode_reward": "decode + reward", "backward": "backward"}
OOM_MARKERS = ("OutOfMemoryError", "out of memory", "CUDA error: out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or any(marker in str(error) for marker in OOM_MARKERS)


def measure(model_name: str, spec: Optional[str], steps: int, batch: int, repeats: int, reward_spec: str,
            seed: int, device_name: str, options: Optional[dict[str, Any]] = None,
            prompts: Sequence[str] = (), threads: Optional[int] = None, compile: bool = False,
            lora_rank: int = 0) -> dict[str, Any]:
    """One configuration, in this process: the median over ``repeats`` timed iterations of the
    guided computation users run (the model's own guidance unless ``options`` sets one). The
    gradient is for the initial latent, or with ``lora_rank`` for a LoRA adapter of that rank on
    the network's attention (an iteration of LoRA fine-tuning: what ``sdo finetune --target lora``
    differentiates, Adjoint Matching's own loss included).

    ``options`` holds the other fields of a :class:`BenchConfig` (dtype, guidance, conditions,
    reward views, ...); the arguments named here win over it."""
    import resource

    import torch

    from shortcut_diffusion.measure.gradcheck.run import estimator_gradient
    from shortcut_diffusion.gradients import get_method
    from shortcut_diffusion.tasks.context import build_context

    config = BenchConfig(**{**(options or {}), "model": model_name, "batch": batch, "reward": reward_spec,
                            "seed": seed, "device": device_name, "prompt": list(prompts), "threads": threads,
                            "compile": compile})
    context = build_context(config, batch=batch, steps=steps, scheduler="auto")
    model, labels, reward, precision, device = (context.model, context.labels, context.reward, context.precision,
                                                context.device)
    estimator = None if spec is None else get_method(spec, seed=seed)
    target, base = "latent", None
    if lora_rank:
        from shortcut_diffusion.measure.bench.lora import lora_adapter

        target, base = "lora", lora_adapter(model, lora_rank)

    def once(est):
        return estimator_gradient(model, context.scheduler, est, reward, target=target, steps=steps,
                                  labels=labels, seed=seed, precision=precision, compile=compile, base=base)

    runs, floor = [], []
    for i in range(repeats + 1):  # the first round warms up allocators and caches
        r = once(estimator)
        # The sampling floor, timed in the same process and interleaved with the estimator's runs:
        # paired ratios are robust to process-to-process speed differences.
        f = once(None) if estimator is not None else r
        if i:
            runs.append(r)
            floor.append(f["seconds"])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    last = runs[-1]
    cosine = None
    if estimator is not None:  # gradient fidelity: the last timed gradient against full's, same noise
        cosine = _cosine_to_full(last["gradient"], lambda: once(get_method("full", seed=seed))["gradient"])
    return {
        "model": model_name, "task": f"lora:{lora_rank}" if lora_rank else "latent", "estimator": spec or "sampling", "steps": steps, "batch": batch,
        "seconds_per_iter": statistics.median(r["seconds"] for r in runs),
        "paired_sampling_seconds": statistics.median(floor),
        "nfe_forward": last["nfe_forward"], "nfe_backward": last["nfe_backward"],
        "saved_bytes": last["saved_bytes"], "peak_mem_mb": round(peak, 1), "cosine_to_full": cosine,
        "device": _device_name(device), "threads": torch.get_num_threads(), "compile": compile, "dtype": precision.name, "guidance": model.guidance_scale,
        "resolution": "x".join(map(str, model.image_shape[1:])),
        **{f"{phase}_s": statistics.median(r["phases"][phase] for r in runs) for phase in PHASES},
    }


def _cosine_to_full(g: Any, full_gradient: Any) -> Optional[float]:
    """The cosine of ``g`` to full backpropagation's gradient; None where full does not fit."""
    import torch

    try:
        ref = full_gradient()
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    if g.norm() > 0 and ref.norm() > 0:
        return round(float(g @ ref / (g.norm() * ref.norm())), 6)
    return 0.0


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _run_worker(args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "shortcut_diffusion.measure.bench.worker", json.dumps(args)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker failed for {args}:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(config: BenchConfig, command: str = "sdo bench", log=print) -> list[dict[str, Any]]:
    if config.quick:
        config = BenchConfig(**{**asdict(config), "model": config.model or "toy", "steps": [2, 4], "repeats": 1,
                                "batch": 2})
    elif config.model is None:
        config = BenchConfig(**{**asdict(config), "model": "digits"})
    if not config.steps or min(config.steps) < 1:
        raise UsageError(f"--steps needs positive numbers, got {config.steps}")
    if config.batch < 1 or config.repeats < 1:
        raise UsageError("batch and repeats must be positive")
    if config.frames_grid:
        from shortcut_diffusion.measure.bench.frames import run_frames_grid

        config.check()
        return run_frames_grid(config, command, log)
    from shortcut_diffusion.gradients import get_method
    from shortcut_diffusion.models.loading import load_model
    from shortcut_diffusion.sampling.schedulers import scheduler_for
    from shortcut_diffusion.tasks.context import model_conditions

    config.check()
    specs = [get_method(s).spec for s in config.estimators]  # validate before any work
    model = load_model(config.model, **config.load_options())  # a model that does not load fails before any work
    scheduler_for(model, "auto", steps=max(config.steps))  # more steps than the scheduler has are refused
    for steps in config.steps:  # range errors (k > steps) and schedules a method cannot follow
        for s in specs:
            get_method(s).check(model.scheduler, steps, task="bench")
    if model.condition_kind == "prompt" and not (config.prompt or config.prompts_file):
        raise UsageError("--prompt is required for a text-to-image model")
    model_conditions(config, model)  # conditions the model does not take fail before any work
    with rundir.claimed(config.out, "bench", overwrite=config.overwrite) as out:
        return _bench(config, specs, out, command, log)


def _bench(config: BenchConfig, specs: list[str], out: Path, command: str, log) -> list[dict[str, Any]]:
    rows, out_of_memory = [], []
    for steps in config.steps:
        for spec in [None, *specs]:
            args = {"model_name": config.model, "spec": spec, "steps": steps, "batch": config.batch,
                    "repeats": config.repeats, "reward_spec": config.reward, "seed": config.seed,
                    "device_name": config.device, "options": asdict(config), "prompts": config.prompt,
                    "threads": config.threads, "compile": config.compile}
            # --quick checks the harness in this process (its peak memory is not a configuration's own)
            try:
                row = measure(**args) if config.quick else _run_worker(args)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                out_of_memory.append(f"{spec or 'sampling'} at N = {steps}")
                if log:
                    log(f"N={steps:4d} {spec or 'sampling':>14}: out of memory")
                continue
            rows.append(row)
            if log:
                log(f"N={steps:4d} {row['estimator']:>14}: {row['seconds_per_iter']:.3f} s/iter, "
                    f"saved {row['saved_bytes'] / 2**20:.1f} MiB, peak {row['peak_mem_mb']:.0f} MB")
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    reporting.atomic_write_bytes(out / "results.csv", table.getvalue().encode())
    by = {(r["estimator"], r["steps"]): r for r in rows}
    curves = {}
    for est in ["sampling", *specs]:
        points = [(n, by[(est, n)]["seconds_per_iter"]) for n in config.steps if (est, n) in by]
        curves[est] = ([p[0] for p in points], [p[1] for p in points])
    reporting.plot_curves(out / "cost_vs_steps.png", curves, xlabel="sampling steps N",
                          ylabel="seconds per iteration", title=f"cost per iteration ({config.model}, batch {config.batch})")
    reward_rows = time_to_reward(config, out, log) if config.time_to_reward else []
    text = report(rows, config, command, reward_rows)
    if out_of_memory:
        text += "\n## Out of memory\n\n" + "\n".join(f"- {what}" for what in out_of_memory) + "\n"
    reporting.atomic_write_bytes(out / "report.md", text.encode())
    return rows


def time_to_reward(config: BenchConfig, out: Path, log=print) -> list[dict[str, Any]]:
    """Latent (digit-class 1 -> 7) and fine-tuning (digit-match) time-to-reward, in this process."""
    from shortcut_diffusion.models.loading import load_model
    from shortcut_diffusion.measure.bench import reward as rw

    if config.quick:
        from shortcut_diffusion.tasks.finetune import FinetuneConfig

        model = load_model(config.model)
        rows = rw.latent_time_to_reward(model, "neg-mse", 1, estimators=["full", "sdo"], seconds=0.5, steps=4, batch=2)
        base = FinetuneConfig(model=config.model, steps=3, batch=2, eval_every=2, eval_per_class=1,
                              checkpoint_every=0, progress=False, cond=["1", "2"])
        rows += rw.finetune_time_to_reward("ink", estimators=["sdo:keep=random"], minutes=0.01,
                                           out=out / "finetune", base=base)
    else:
        model = load_model(config.model)
        rows = rw.latent_time_to_reward(model, "digit-class:7", 1, seconds=config.latent_seconds, batch=config.batch,
                                        seed=config.seed)
        rows += rw.finetune_time_to_reward("digit-match", minutes=config.finetune_minutes, out=out / "finetune")
    reporting.atomic_write_bytes(out / "time_to_reward.json", json.dumps(rows, indent=1).encode())
    rw.plot(rows, out / "reward_vs_time.png")
    if log:
        log(rw.markdown(rows, reference="full"))
    return rows


def _relative(row: dict[str, Any], reference: dict[str, Any]) -> float:
    """``row``'s cost over ``reference``'s, each first divided by its own paired sampling time, so
    that a difference in speed between the two processes cancels."""
    return (float(row["seconds_per_iter"]) / float(row["paired_sampling_seconds"])) / (
        float(reference["seconds_per_iter"]) / float(reference["paired_sampling_seconds"]))


def _targets(by: dict, steps: list[int]) -> list[str]:
    lines = []
    if ("sdo", 50) in by and ("full", 50) in by:
        sdo, full = by[("sdo", 50)], by[("full", 50)]
        ratio_floor = sdo["seconds_per_iter"] / sdo["paired_sampling_seconds"]
        ratio_full = _relative(sdo, full)
        lines.append(f"- sdo seconds per iteration at N=50: {ratio_floor:.2f}x sampling (target <= 1.15x: "
                     f"{'met' if ratio_floor <= 1.15 else f'missed by {ratio_floor - 1.15:.2f}x'}), "
                     f"{ratio_full:.2f}x full (target <= 0.40x: "
                     f"{'met' if ratio_full <= 0.40 else f'missed by {ratio_full - 0.40:.2f}x'})")
        budget = 1.5 / 50 * full["saved_bytes"]
        lines.append(f"- sdo saved bytes at N=50: {sdo['saved_bytes'] / full['saved_bytes']:.4f} of full "
                     f"(target <= 1.5/N = 0.0300: {'met' if sdo['saved_bytes'] <= budget else 'missed'})")
    if ("sdo", 10) in by and ("sdo", 100) in by:
        growth = by[("sdo", 100)]["saved_bytes"] / by[("sdo", 10)]["saved_bytes"] - 1
        lines.append(f"- sdo saved bytes N=100 vs N=10: {growth:+.2%} (target within 10%: "
                     f"{'met' if abs(growth) <= 0.10 else 'missed'})")
    return lines or ["- (the targets are stated at N = 10, 50 and 100; this run has other N)"]


def _profile(by: dict, steps: int) -> str:
    """Where an iteration's time goes, per estimator, at ``steps``."""
    rows = [r for (_, n), r in by.items() if n == steps and r.get("backward_s") not in (None, "")]
    if not rows:
        return ""
    lines = [f"\n## Where the time goes (N = {steps})\n",
             "Seconds per iteration by phase (medians; network forwards while sampling are timed inside the "
             "network calls, backward includes checkpoint recomputation).\n",
             "| estimator | " + " | ".join(PHASES.values()) + " | total |", "|---|" + "---|" * (len(PHASES) + 1)]
    for r in rows:
        lines.append(f"| {r['estimator']} | " + " | ".join(f"{float(r[f'{p}_s']):.3f}" for p in PHASES)
                     + f" | {float(r['seconds_per_iter']):.3f} |")
    full = by.get(("full", steps))
    if full:
        floor = float(full["paired_sampling_seconds"]) / float(full["seconds_per_iter"])
        lines.append(f"\nEvery estimator samples, so none can cost less than sampling: sampling / full = {floor:.2f} "
                     "here (paired, in full's process). An estimator's ratio to full is at least that.")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], config: BenchConfig, command: str,
           reward_rows: Optional[list[dict[str, Any]]] = None) -> str:
    by = {(r["estimator"], r["steps"]): r for r in rows}
    first = rows[0] if rows else {}
    device = first.get("device", "?")
    parts = [f"# Cost per optimization iteration\n\nCommand: `{command}`\n\nModel `{config.model}` "
             f"(decoded {first.get('resolution', '?')}, {first.get('dtype', '?')}, guidance {first.get('guidance', '?')}: the "
             f"guided computation users run), batch {config.batch}, latent target, median of {config.repeats} "
             f"timed iterations, device {device}. "
             "Ratios come two ways, both from synchronised clocks (CUDA is synchronised around every timed "
             "call). Paired: to plain no-grad sampling timed in the same process, interleaved with the "
             "estimator's iterations (`x sampling`), and to `full` as the ratio of the two paired ratios "
             "(`x full`). Raw: the plain quotient of seconds per iteration, each configuration in its own "
             "clean process (`raw x sampling` against the `sampling` row, `raw x full`). Pairing cancels "
             "a process-to-process difference in speed; where the floor runs slower inside a heavy "
             "estimator's process (allocator state after a large graph, clocks), the raw ratio is the one "
             "to read.\n"]
    for steps in config.steps:
        full, floor = by.get(("full", steps)), by.get(("sampling", steps))
        parts.append(f"\n## N = {steps}\n\n| estimator | s/iter | x sampling | x full | raw x sampling | raw x full | "
                     "NFE fwd/bwd | saved MiB | x full saved | peak MB |\n|---|---|---|---|---|---|---|---|---|---|")
        for (est, n), r in by.items():
            if n != steps:
                continue
            x_full = f"{_relative(r, full):.2f}" if full else "-"
            raw_floor = f"{r['seconds_per_iter'] / floor['seconds_per_iter']:.2f}" if floor else "-"
            raw_full = f"{r['seconds_per_iter'] / full['seconds_per_iter']:.2f}" if full else "-"
            saved_full = (f"{r['saved_bytes'] / full['saved_bytes']:.4f}" if full and full["saved_bytes"] else "-")
            parts.append(f"| {est} | {r['seconds_per_iter']:.3f} | {r['seconds_per_iter'] / r['paired_sampling_seconds']:.2f} | "
                         f"{x_full} | {raw_floor} | {raw_full} | {r['nfe_forward']}/{r['nfe_backward']} | "
                         f"{r['saved_bytes'] / 2**20:.2f} | {saved_full} | {r['peak_mem_mb']:.0f} |")
    estimators = list(dict.fromkeys(r["estimator"] for r in rows if r["estimator"] != "sampling"))
    parts.append("\n## Gradient fidelity: cosine to `full` on the same noise\n\n| estimator | "
                 + " | ".join(f"N = {n}" for n in config.steps) + " |\n|---|" + "---|" * len(config.steps))
    for est in estimators:
        cells = [by.get((est, n), {}).get("cosine_to_full") for n in config.steps]
        parts.append(f"| {est} | " + " | ".join("-" if c in (None, "") else f"{float(c):.3f}" for c in cells) + " |")
    parts.append("\nA cosine of 0: the estimator's gradient for the initial noise is exactly zero "
                 "(truncated:k=1 and refl stop gradients before the first step).")
    parts.append(_profile(by, 50 if 50 in config.steps else max(config.steps)))
    if reward_rows:
        from shortcut_diffusion.measure.bench.reward import markdown, targets

        parts.append("\n## Time to reward\n\nSame seeds, starting point and wall-clock budget for every "
                     "estimator; rewards of plainly sampled images. Plot: `reward_vs_time.png`.\n")
        parts.append(markdown([r for r in reward_rows if r["task"] == "latent"], reference="full"))
        parts.append(markdown([r for r in reward_rows if r["task"] == "finetune"], reference="checkpointed"))
    parts.append("\n## Targets\n")
    parts.extend(_targets(by, config.steps))
    if reward_rows:
        parts.extend(targets(reward_rows))
    return "\n".join(parts) + "\n"
