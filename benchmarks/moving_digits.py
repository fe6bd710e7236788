"""The moving-digits testbed's numbers for docs/video.md: the bundled model's samples, and
``sdo demo --model moving-digits`` (moving 1s turned into moving 7s) timed in process CPU time on
one thread.

    OMP_NUM_THREADS=1 python benchmarks/moving_digits.py --out runs/moving_bench --docs docs/results
"""

from __future__ import annotations

import argparse
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


VARIANTS = {"lr 0.15 (the digits demo's)": {"lr": 0.15}, "proximity-weight 1": {"proximity_weight": 1.0}}
"""Demo variants on seed 0: the digits demo's larger step, and a motion-keeping term."""


def markdown(results: dict) -> str:
    q = results["samples"]["report"]
    per_class = results["per_class"]
    lines = ["Command: `OMP_NUM_THREADS=1 python benchmarks/moving_digits.py --out runs/moving_bench --docs docs/results "
             f"--per-class {per_class}`",
             "", f"Machine: {results['machine']}; date {results['date']}; times are process CPU seconds on one thread.", "",
             f"### samples (DDIM 50, {per_class} videos per class, directions in turn)", "",
             "| videos | accuracy (frames) | all frames right | judge (frames) | digits-FD (mean of frames) | "
             "digits-FD (worst frame) | motion accuracy | motion error (px) | ink |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in q.items():
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['video_accuracy']:.3f} | {row['judge_accuracy']:.3f} | "
                     f"{row['digits_fd']:.2f} | {row['digits_fd_worst_frame']:.2f} | {row['motion_accuracy']:.3f} | "
                     f"{row['motion_error']:.2f} | {row['ink']:.2f} |")
    lines += ["", "### sdo demo --model moving-digits (1 -> 7 in every frame)", "",
              "| run | all 3 judges read 7 in every frame | mlp | knn | forest | frames read 7 by all | "
              "motion within 1 px | motion deviation mean (px) | max (px) | CPU s | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, d in results["demo"].items():
        judges = d["read_by_judge"]
        lines.append(f"| {name} | {d['read_by_all'][1]}/{d['count']} (before {d['read_by_all'][0]}) | "
                     f"{judges['mlp']}/{d['count']} | {judges['knn']}/{d['count']} | {judges['forest']}/{d['count']} | "
                     f"{d['frames_read_by_all']:.3f} | {d['motion']['motion_within_tolerance']:.3f} | "
                     f"{d['motion']['motion_deviation']:.2f} | {d['motion']['motion_deviation_max']:.2f} | "
                     f"{d['cpu_seconds']:.1f} | {d['wall_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/moving_bench")
    parser.add_argument("--docs", default=None, help="write moving_digits_cpu.json/.md here")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"machine": "2-core Intel Xeon, CPU only", "date": "2026-12-01", "per_class": args.per_class,
               "samples": sample_quality(args.per_class),
               "demo": {f"demo seed {seed}": demo(Path(args.out) / f"demo{seed}", seed=seed) for seed in args.seeds}}
    for name, options in VARIANTS.items():  # seed 0
        results["demo"][name] = demo(Path(args.out) / name.replace(" ", "_"), seed=0, **options)
    text = markdown(results)
    print(text)
    if args.docs:
        Path(args.docs, "moving_digits_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
        Path(args.docs, "moving_digits_cpu.md").write_text(text)


if __name__ == "__main__":
    main()
