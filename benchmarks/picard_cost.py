"""What one latent iteration costs with each rollout, against one plain sampling pass.

On the demo's task (8 samples of class 1 towards ``digit-class:7``, N = 50, DDIM), measured
interleaved in one process with the process's CPU time (``time.process_time``; run it with one
thread): a plain sampling pass, a sequential SDO iteration, a warm-started Picard iteration (one
sweep) and the mean of Picard iterations with the periodic sequential pass
(``--picard-every``) counted in.

    OMP_NUM_THREADS=1 python benchmarks/picard_cost.py --out runs/picard_cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from results_files import write_outputs

from shortcut_diffusion.gradients.picard import PicardSettings
from shortcut_diffusion.models.testbed import load_digits_model
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.generate import generate
from shortcut_diffusion.tasks.latent.optimize import optimize_latent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=PicardSettings().every)
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2],
                        help="--picard-stride values measured (a warm sweep evaluates every k-th step)")
    parser.add_argument("--out", default="runs/picard_cost")
    parser.add_argument("--docs", default=None, help="also copy the outputs there, as picard_cost_cpu.*")
    args = parser.parse_args(argv)
    command = "python benchmarks/picard_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    model = load_digits_model()
    reward = get_reward("digit-class:7", model=model, shape=model.image_shape)
    labels = torch.full((8,), 1)
    z = torch.randn((8, *model.sample_shape), generator=torch.Generator().manual_seed(0))

    def plain() -> float:
        began = time.process_time()
        with torch.no_grad():
            generate(model, z, labels.tolist(), steps=50, seed=1)
        return time.process_time() - began

    def iterations(rollout: str, every: int, iters: int, stride: int = 1) -> list[dict]:
        return optimize_latent(model, reward, labels, steps=50, lr=0.15, seed=0, progress=False, iters=iters,
                               rollout=rollout, picard=PicardSettings(sweeps=1, every=every, stride=stride),
                               clock=time.process_time).history

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain_pass": [], "sdo": []}
    for _ in range(args.repeats):
        times["plain_pass"] += [plain() for _ in range(3)]
        times["sdo"] += [r["seconds"] for r in iterations("sequential", 0, 6)[1:]]
        for stride in args.strides:
            suffix = "" if stride == 1 else f"_stride{stride}"
            rows = iterations("picard", args.every, 2 * args.every + 1, stride)[1:]  # two periods, a pass in each
            times.setdefault("picard_warm" + suffix, []).extend(r["seconds"] for r in rows if r["rollout"] == "picard")
            times.setdefault("picard_mean" + suffix, []).append(statistics.mean(r["seconds"] for r in rows))
    median = {key: statistics.median(value) for key, value in times.items()}
    result = {"command": command, "every": args.every, "seconds": median,
              "ratio": {key: median[key] / median["plain_pass"] for key in median}}
    lines = [f"Command: `{command}`", "",
             "Machine: 2-core Intel Xeon, CPU only, one thread, shared with other jobs; CPU time of the process "
             "(time.process_time), 2026-12-01.", "",
             "| what | CPU s (median) | x a plain pass |", "|---|---|---|"]
    names = {"plain_pass": "plain sampling pass (N = 50)", "sdo": "sequential SDO iteration"}
    for stride in args.strides:
        suffix, part = ("", "") if stride == 1 else (f"_stride{stride}", f", one step in {stride} evaluated")
        names["picard_warm" + suffix] = f"warm-started Picard iteration (one sweep{part})"
        names["picard_mean" + suffix] = f"Picard iteration{part}, mean with a sequential pass every {args.every}"
    lines += [f"| {names[key]} | {median[key]:.3f} | {result['ratio'][key]:.2f} |" for key in names]
    write_outputs({"json": json.dumps(result, indent=1), "md": "\n".join(lines) + "\n"}, args.out, "picard_cost",
                  args.docs)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
