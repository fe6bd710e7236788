"""The latent-optimization table of the README: every method on three digits tasks, at equal wall-clock.

Every method gets the same seeds, the same starting noise (8 samples of class 1) and the same
wall-clock budget of optimization per task: the per-step estimators, the recomputing methods
(adjoint, DOODL) and training-free guidance (FreeDoM: one guided pass, timed; its own time is its
budget). Per task and method: final reward (plain sampling of the final latents, the method's
own sampler), digits-FD and class-FD of the final samples, the fraction the held-out judge reads
as the goal class, iterations, seconds per iteration, the peak held for backward, the time to 95%
of the best improvement any method reached, and the time to the reward ``full`` ends at.
``truncated:k=1``, ``refl`` and ``drtune`` are not rows: no gradient reaches the initial noise
through them (``sdo gradcheck`` shows it).

    OMP_NUM_THREADS=1 python benchmarks/latent_table.py --out runs/latent_table --docs docs/results
    python benchmarks/latent_table.py --quick        # a smoke run of the harness (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shortcut_diffusion.measure.bench import reward as rw
from shortcut_diffusion.models.testbed import load_digits_model

METHODS = ["full", "checkpointed", "alignprop", "sdo", "adjoint", "doodl", "freedom:scale=0.5",
           "freedom:scale=1,travel=3"]
# name: (reward spec, conditioning class)
TASKS = {"digit-class 1->7": ("digit-class:7", 1), "style (ref #0)": ("style:0", 1),
         "adversarial 1->7": ("adversarial:7", 1)}


def run(args: argparse.Namespace) -> list[dict]:
    model = load_digits_model()
    rows = []
    for task in args.tasks:
        spec, cond = TASKS[task]
        for row in rw.latent_time_to_reward(model, spec, cond, estimators=args.methods, seconds=args.seconds,
                                            steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed):
            row["task"] = task
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/latent_table"))
    parser.add_argument("--docs", type=Path, default=None, help="also write latent_table.{md,json,png} there")
    parser.add_argument("--seconds", type=float, default=40.0, help="optimization wall-clock per method and task")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 second, batch 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seconds, args.batch = 4, 1.0, 2
    command = "python benchmarks/latent_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    text = (f"Command: `{command}`\n\n" + rw.markdown(rows, reference="full") + "\n" + "\n".join(rw.targets(rows)) + "\n")
    for folder in filter(None, [args.out, args.docs]):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "latent_table.md").write_text(text)
        (folder / "latent_table.json").write_text(json.dumps(rows, indent=1) + "\n")
        rw.plot(rows, folder / "latent_table.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
