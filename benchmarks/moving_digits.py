"""The moving-digits testbed's numbers for docs/video.md: the bundled model's samples, and
``sdo demo --model moving-digits`` (moving 1s turned into moving 7s) timed in process CPU time on
one thread.

    OMP_NUM_THREADS=1 python benchmarks/moving_digits.py --out runs/moving_bench --docs docs/results --seeds 0 1 2 3 4 \
        --variant-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch


def sample_quality(per_class: int) -> dict:
    from shortcut_diffusion import load_model
    from shortcut_diffusion.models.testbed.moving.frames import evaluate_video_model

    model = load_model("moving-digits")
    start = time.process_time()
    report = evaluate_video_model(model, per_class, seed=0, steps=50)
    return {"report": report, "cpu_seconds": round(time.process_time() - start, 1), "training": model.info}


OWN_SETTINGS = ((20, None), (50, None), (20, 2.5), (20, 4.0))
"""``(DDIM steps, guidance)`` of the own-7s rows: the demo's 20 steps and the model's guidance
(None), 50 steps, and two stronger guidance scales."""


def own_sevens(count: int = 40, settings: tuple = OWN_SETTINGS) -> dict:
    """The model's own 7s (conditioned on 7, the directions in turn), read by the judge panel as
    the demo's 7s are: what the model gives when asked for 7s directly."""
    from shortcut_diffusion import load_model
    from shortcut_diffusion.models.testbed.moving.frames import frame_panel_report
    from shortcut_diffusion.models.testbed.moving.model import MotionLabel
    from shortcut_diffusion.tasks.generate import sample_images

    model = load_model("moving-digits")
    labels = [MotionLabel(7, i % 4) for i in range(count)]
    noise = torch.randn((count, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    rows = {}
    for n, guidance in settings:
        videos = sample_images(model, noise, labels, steps=n, seed=1, batch=count, guidance=guidance)
        report = frame_panel_report(model, videos, [7] * count)
        name = f"own 7s, DDIM {n}" + ("" if guidance is None else f", guidance {guidance:g}")
        rows[name] = {k: report[k] for k in ("read_by_all", "count", "read_by_judge", "frames_read_by_all", "realism")}
    return rows


def demo(out: Path, **options) -> dict:
    from shortcut_diffusion.tasks.latent.config import DemoConfig
    from shortcut_diffusion.tasks.latent.run import run_latent

    settings = {"model": "moving-digits", "out": str(out), "overwrite": True, "progress": False, **options}
    start, wall = time.process_time(), time.time()
    run_latent(DemoConfig(**settings), given=set(settings))  # these win over the demo's settings
    cpu, wall = time.process_time() - start, time.time() - wall
    summary = json.loads((out / "summary.json").read_text())
    panel, before = summary["panel"], summary["panel_start"]
    return {"options": options, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
            "reward": [summary["start_reward"], summary["final_reward"]],
            "read_by_all": [before["read_by_all"], panel["read_by_all"]], "count": panel["count"],
            "read_by_judge": panel["read_by_judge"], "frames_read_by_all": panel["frames_read_by_all"],
            "realism": panel["realism"], "saturation": panel["saturation"], "motion": summary["motion"]}


VARIANTS = {"select-min-reward -0.1 (the digits demo's)": {"select_min_reward": -0.1},
            "lr 0.15 (the digits demo's)": {"lr": 0.15},
            "guidance 4": {"guidance": 4.0},
            "guidance 1 (the conditional model alone)": {"guidance": 1.0},
            "warm-up 5 of 20 steps": {"warmup": 5},
            "50 DDIM steps": {"steps": 50},
            "full backpropagation": {"estimator": "full"}}
"""Demo variants, each run on ``--variant-seeds``: the digits demo's selection threshold and its
larger step, a stronger guidance (the model's own 7s read better at it) and none (the
1-conditioned model pulls less towards its guidance), the latent 5 steps in instead of the noise,
more steps, and the exact gradient instead of SDO's."""


def judge_cells(read_by_judge: dict, count: int) -> str:
    """The panel's per-judge counts as table cells: ``mlp | knn | forest``."""
    return " | ".join(f"{read_by_judge[name]}/{count}" for name in ("mlp", "knn", "forest"))


def markdown(results: dict) -> str:
    q = results["samples"]["report"]
    per_class = results["per_class"]
    lines = ["Command: `OMP_NUM_THREADS=1 python benchmarks/moving_digits.py --out runs/moving_bench --docs docs/results "
             f"--per-class {per_class} --seeds {' '.join(map(str, results['seeds']))} "
             f"--variant-seeds {' '.join(map(str, results['variant_seeds']))}`",
             "", f"Machine: {results['machine']}; date {results['date']}; times are process CPU seconds on one thread.", "",
             f"### samples (DDIM 50, {per_class} videos per class, directions in turn)", "",
             "| videos | accuracy (frames) | all frames right | judge (frames) | digits-FD (mean of frames) | "
             "digits-FD (worst frame) | motion accuracy | motion error (px) | ink |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in q.items():
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['video_accuracy']:.3f} | {row['judge_accuracy']:.3f} | "
                     f"{row['digits_fd']:.2f} | {row['digits_fd_worst_frame']:.2f} | {row['motion_accuracy']:.3f} | "
                     f"{row['motion_error']:.2f} | {row['ink']:.2f} |")
    lines += ["", "### the model's own 7s (40 videos conditioned on 7, the directions in turn, noise seed 0; "
              "guidance: the model's unless named)", "",
              "| videos | all 3 judges read 7 in every frame | mlp | knn | forest | frames read 7 by all | realism |",
              "|---|---|---|---|---|---|---|"]
    for name, d in results["own"].items():
        lines.append(f"| {name} | {d['read_by_all']}/{d['count']} | {judge_cells(d['read_by_judge'], d['count'])} | "
                     f"{d['frames_read_by_all']:.3f} | {d['realism']:.2f}x |")
    lines += ["", "### sdo demo --model moving-digits (1 -> 7 in every frame)", "",
              "| run | all 3 judges read 7 in every frame | mlp | knn | forest | frames read 7 by all | "
              "realism | motion within 1 px | motion deviation mean (px) | max (px) | CPU s | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, d in results["demo"].items():
        lines.append(f"| {name} | {d['read_by_all'][1]}/{d['count']} (before {d['read_by_all'][0]}) | "
                     f"{judge_cells(d['read_by_judge'], d['count'])} | "
                     f"{d['frames_read_by_all']:.3f} | {d['realism']:.2f}x | {d['motion']['motion_within_tolerance']:.3f} | "
                     f"{d['motion']['motion_deviation']:.2f} | {d['motion']['motion_deviation_max']:.2f} | "
                     f"{d['cpu_seconds']:.1f} | {d['wall_seconds']:.1f} |")
    return "\n".join(lines + over_seeds(results)) + "\n"


def variant_row(name: str, seed: int) -> str:
    """A variant's row in ``results["demo"]``: its name on seed 0, ``NAME, seed S`` on another."""
    return name if seed == 0 else f"{name}, seed {seed}"


def over_seeds(results: dict) -> list[str]:
    """Each variant against the shipped settings on the same seeds (``--variant-seeds``): videos
    read as 7 by all three judges in every frame, summed over the seeds."""
    seeds, demos = results["variant_seeds"], results["demo"]
    if seeds == [0]:
        return []
    total = lambda rows: f"{sum(demos[r]['read_by_all'][1] for r in rows)}/{sum(demos[r]['count'] for r in rows)}"
    lines = ["", f"### over seeds {' '.join(map(str, seeds))}: videos read 7 by all 3 judges in every frame", "",
             "| run | read | per seed | largest motion deviation (px) |", "|---|---|---|---|"]
    for name in ["shipped settings", *VARIANTS]:
        rows = [f"demo seed {s}" if name == "shipped settings" else variant_row(name, s) for s in seeds]
        lines.append(f"| {name} | {total(rows)} | {', '.join(str(demos[r]['read_by_all'][1]) for r in rows)} | "
                     f"{max(demos[r]['motion']['motion_deviation_max'] for r in rows):.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/moving_bench")
    parser.add_argument("--docs", default=None, help="write moving_digits_cpu.json/.md here")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant-seeds", type=int, nargs="+", default=[0],
                        help="the seeds each variant runs on (each among --seeds, so that the shipped settings ran on it)")
    args = parser.parse_args()
    if not set(args.variant_seeds) <= set(args.seeds):
        parser.error("--variant-seeds must be among --seeds")
    torch.set_num_threads(1)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    results = {"machine": "2-core Intel Xeon, CPU only", "date": date, "per_class": args.per_class, "seeds": args.seeds,
               "variant_seeds": args.variant_seeds,
               "samples": sample_quality(args.per_class), "own": own_sevens(),
               "demo": {f"demo seed {seed}": demo(Path(args.out) / f"demo{seed}", seed=seed) for seed in args.seeds}}
    for seed in args.variant_seeds:
        for name, options in VARIANTS.items():
            row = variant_row(name, seed)
            results["demo"][row] = demo(Path(args.out) / row.replace(" ", "_"), seed=seed, **options)
    text = markdown(results)
    print(text)
    if args.docs:
        Path(args.docs, "moving_digits_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
        Path(args.docs, "moving_digits_cpu.md").write_text(text)


if __name__ == "__main__":
    main()
