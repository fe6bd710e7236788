"""The demo's trade-off of reward against realism, over the library's own levers.

``sdo demo`` (eight 1s steered to 7s by SDO on the initial noise, the reward averaged over
translated views) with one lever changed at a time: the proximity weight (pixel distance to the
start), the Gaussian prior on the noise, the number of iterations (early stopping), the
learning rate, and per-sample early stopping on realism (``--select own-samples``: each sample
keeps its iterate nearest to the model's own samples of 7 once its reward reaches -0.1; the
reference is the model's samples, never the data set the realism column measures against).
``sdo demo`` itself is the row "select own-samples, 36 iterations"; the other rows change one
lever of the former demo (30 iterations, last iterate). Every run is read by the judge panel (never a reward: an MLP, k-nearest neighbours,
a random forest) and by realism (the median distance to the nearest real 7 over the median
nearest-neighbour distance among real 7s; 1x is as close as real digits are) and saturation. The
panel only reads the results: no setting is chosen by it inside a run. One thread, one run at a time.

    OMP_NUM_THREADS=1 python benchmarks/demo_tradeoff.py --out runs/demo_tradeoff --docs docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from shortcut_diffusion import load_model
from shortcut_diffusion.models.testbed.panel import panel_report
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.latent.optimize import optimize_latent
from shortcut_diffusion.tasks.latent.selection import make_selection

DEMO = {"steps": 50, "iters": 30, "lr": 0.15, "prior_weight": None, "proximity_weight": 0.0, "select": "last"}
LEVERS = [  # (name, changes to the demo's settings)
    ("earlier demo (last iterate, 30 iterations)", {}),
    ("proximity 1", {"proximity_weight": 1.0}),
    ("proximity 3", {"proximity_weight": 3.0}),
    ("proximity 10", {"proximity_weight": 10.0}),
    ("prior 300", {"prior_weight": 300.0}),
    ("prior 1000", {"prior_weight": 1000.0}),
    ("15 iterations", {"iters": 15}),
    ("lr 0.05", {"lr": 0.05}),
    ("40 iterations", {"iters": 40}),
    ("select own-samples", {"select": "own-samples"}),
    ("select own-samples, 36 iterations", {"select": "own-samples", "iters": 36}),
    ("select own-samples, 40 iterations (sdo demo)", {"select": "own-samples", "iters": 40}),
]


def run(args: argparse.Namespace) -> list[dict]:
    model = load_model("digits")
    plain = get_reward("digit-class:7", model=model)
    labels = torch.tensor([1] * args.batch)
    rows = []
    for name, changes in LEVERS:
        settings = {**DEMO, **changes}
        if args.tiny:
            settings.update(steps=4, iters=min(settings["iters"], 2))
        # a fresh reward per row: its translated views are drawn from the seed, as in a fresh run
        reward = get_reward("digit-class:7", model=model, augment=["translation"], seed=args.seed)
        select = make_selection(settings.pop("select"), model, "digit-class:7", labels.tolist(), seed=args.seed)
        result = optimize_latent(model, reward, labels, seed=args.seed, progress=False, select=select, **settings)
        report = panel_report(model, result.images, 7)
        rows.append({"setting": name, **changes, "reward": float(plain(result.images, labels).mean()),
                     "read_by_all": report["read_by_all"], "read_by_judge": report["read_by_judge"],
                     "count": report["count"], "realism": report["realism"], "saturation": report["saturation"],
                     "digits_fd": report["digits_fd"],
                     "seconds": sum(r["seconds"] for r in result.history)})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}` (2-core Intel Xeon, CPU only, one thread; seconds: CPU time of the "
             "optimization)", "",
             "| setting | reward (digit-class:7) | all 3 read 7 | mlp | knn | forest | realism | saturation | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        judges = " | ".join(f"{r['read_by_judge'][name]}/{r['count']}" for name in ("mlp", "knn", "forest"))
        lines.append(f"| {r['setting']} | {r['reward']:.2f} | {r['read_by_all']}/{r['count']} | {judges} | "
                     f"{r['realism']:.2f}x | {r['saturation']:.0%} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="4 steps, 2 iterations: checks the script")
    parser.add_argument("--out", type=Path, default=Path("runs/demo_tradeoff"))
    parser.add_argument("--docs", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python benchmarks/demo_tradeoff.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.environ["SDO_BUDGET_CLOCK"] = "cpu"  # the seconds column: CPU time of one thread
    rows = run(args)
    text = markdown(rows, command)
    for directory, stem in [(args.out, "demo_tradeoff")] + ([(args.docs, "demo_tradeoff_cpu")] if args.docs else []):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{stem}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
        (directory / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
