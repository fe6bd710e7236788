"""How close the warm-started Picard gradient is to the sequential SDO gradient, per setting.

On the demo's task (8 samples of class 1 towards ``digit-class:7``, N = 50, DDIM, Adam lr 0.15),
each setting runs ``--iters`` iterations of ``--rollout picard`` with ``--picard-check 1``: every
iteration also computes the sequential SDO gradient and the cosine of the two
(``picard_cosine``). The table gives the mean and lowest cosine over the warm iterations, and the
final reward. Cosines are not timings: they do not depend on the machine's load.

    OMP_NUM_THREADS=1 python benchmarks/picard_cosine.py --out runs/picard_cosine --docs docs/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from results_files import write_outputs

from shortcut_diffusion.gradients.picard import PicardSettings
from shortcut_diffusion.models.testbed import load_digits_model
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.latent.optimize import optimize_latent

SETTINGS = {
    "held predictions, one sweep": {"extrapolate": False, "secant": False},
    "held predictions, two sweeps": {"extrapolate": False, "secant": False, "sweeps": 2},
    "extrapolated warm start": {"secant": False},
    "extrapolated warm start + secant slopes (default)": {},
    "the default, one step in 2 evaluated (--picard-stride 2)": {"stride": 2},
}


def run(model, reward, labels, iters: int, options: dict) -> dict:
    result = optimize_latent(model, reward, labels, steps=50, iters=iters, lr=0.15, seed=0, progress=False,
                             rollout="picard", picard=PicardSettings(check=1, **options))
    warm = [r["picard_cosine"] for r in result.history if r.get("rollout") == "picard"]
    with torch.no_grad():
        final = float(reward(result.images, labels).mean())
    return {"options": options, "cosines": warm, "mean_cosine": statistics.mean(warm), "min_cosine": min(warm),
            "final_reward": final, "sweeps": sum(r["picard_sweeps"] for r in result.history)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--out", default="runs/picard_cosine")
    parser.add_argument("--docs", default=None, help="also copy the outputs there, as picard_cosine_cpu.*")
    args = parser.parse_args(argv)
    command = "python benchmarks/picard_cosine.py " + " ".join(sys.argv[1:] if argv is None else argv)
    model = load_digits_model()
    reward = get_reward("digit-class:7", model=model, shape=model.image_shape)
    labels = torch.full((8,), 1)
    rows = {name: run(model, reward, labels, args.iters, options) for name, options in SETTINGS.items()}
    lines = [f"Command: `{command}`", "", "Machine: 2-core Intel Xeon, CPU only, one thread; 2026-12-01. The demo's "
             f"task, {args.iters} iterations, a sequential pass every 10 (not counted in the cosines).", "",
             "| setting | mean cosine to the sequential gradient | lowest | sweeps per warm iteration (network calls / N) | final reward |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_cosine']:.2f} | {r['min_cosine']:.2f} | {r['options'].get('sweeps', 1) / r['options'].get('stride', 1):g} | "
                     f"{r['final_reward']:.3f} |")
    text = "\n".join(lines) + "\n"
    outputs = {"json": json.dumps(rows, indent=1), "md": text}
    write_outputs(outputs, args.out, "picard_cosine", args.docs)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
