"""The latent-optimization table of the README: every method on three digits tasks, at an equal budget.

On either testbed (``--model digits``, the DDIM diffusion model, or ``digits-flow``, its
rectified-flow twin), every method gets the same seeds, the same starting noise (8 samples of
class 1) and the same budget of optimization per task: the per-step estimators and surrogate
methods of ``gradients/``, the recomputing methods (adjoint, DOODL) and, on the diffusion model,
training-free guidance (FreeDoM: one guided pass, timed; its own time is its budget). The budget is
read on the process's CPU clock (``SDO_BUDGET_CLOCK=cpu``, set here) with one thread: equal to
wall-clock on an idle machine, and barely moved by other processes on a shared one.

Per task and method: final reward (plain sampling of the final latents, the method's own sampler),
digits-FD and class-FD of the final samples, the judge panel's readings of the goal class (the
conditioned class for the style task), realism and saturation, iterations, seconds per iteration,
the peak held for backward, the time to 95% of the best improvement any method reached, and the
time to the reward ``full`` ends at. ``truncated:k=1`` and ``refl`` are not rows: no gradient
reaches the initial noise through them (``sdo gradcheck`` shows it); Adjoint Matching is a
fine-tuning method. The adjoint and DOODL invert DDIM and FreeDoM guides a diffusion model, so they
are rows on ``digits`` only.

    OMP_NUM_THREADS=1 python benchmarks/latent_table.py --model digits --docs docs/results
    OMP_NUM_THREADS=1 python benchmarks/latent_table.py --model digits-flow --docs docs/results
    python benchmarks/latent_table.py --quick        # a smoke run of the harness
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shortcut_diffusion.measure.bench import reward as rw
from shortcut_diffusion.models.loading import load_model

GRADIENTS = ["full", "checkpointed", "alignprop", "drtune", "sdo", "leapalign", "flowbp-sparse", "flowbp-bridge",
             "flowbp-lagrange", "draft-lv", "direct-align"]
DIFFUSION_ONLY = ["adjoint", "doodl", "freedom:scale=0.5", "freedom:scale=1,travel=3"]  # DDIM inversion, guidance
MODELS = {"digits": ("latent_table", 50), "digits-flow": ("latent_table_flow", 28)}  # results name, default steps
# name: (reward spec, conditioning class)
TASKS = {"digit-class 1->7": ("digit-class:7", 1), "style (ref #0)": ("style:0", 1),
         "adversarial 1->7": ("adversarial:7", 1)}


def run(args: argparse.Namespace) -> list[dict]:
    model = load_model(args.model)
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
    parser.add_argument("--model", default="digits", choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("runs/latent_table"))
    parser.add_argument("--docs", type=Path, default=None, help="also write the table's .md, .json and .png there")
    parser.add_argument("--seconds", type=float, default=30.0, help="optimization budget (CPU seconds) per method and task")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: 50 on digits, 28 on digits-flow)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method that reaches the noise")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 second, batch 2")
    args = parser.parse_args(argv)
    name, steps = MODELS[args.model]
    args.steps = args.steps or steps
    args.methods = args.methods or GRADIENTS + (DIFFUSION_ONLY if args.model == "digits" else [])
    if args.quick:
        args.steps, args.seconds, args.batch = 4, 1.0, 2
    os.environ["SDO_BUDGET_CLOCK"] = "cpu"
    command = "python benchmarks/latent_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    text = (f"Command: `{command}` (budget: CPU seconds of one thread, on a 2-core Intel Xeon, CPU only)\n\n"
            + rw.markdown(rows, reference="full") + "\n" + "\n".join(rw.targets(rows)) + "\n")
    for folder in filter(None, [args.out, args.docs]):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.md").write_text(text)
        (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        rw.plot(rows, folder / f"{name}.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
