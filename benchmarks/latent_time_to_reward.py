"""Latent time-to-reward with a budget long enough for ``full`` to get somewhere.

``sdo bench --time-to-reward`` gives every estimator 60 s; in that time ``full`` gets nowhere near
the 95% threshold, so its ratio to ``sdo`` is only a bound. This runs the same task (the initial
noise of 8 samples of class 1 optimized towards ``digit-class:7``, N = 50, Adam lr 0.15) for the
estimators given, each for ``--seconds`` of wall-clock, and reports the time to 95% of the best
improvement, the time to the reward level ``full`` ends at (a measured ratio either way), and the
digits-FD (against all real digits) and class-FD (against real 7s) of the samples, at the end and at
that equal reward.

    OMP_NUM_THREADS=1 python benchmarks/latent_time_to_reward.py --seconds 240 --out runs/latent_ttr
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from results_files import write_outputs

from shortcut_diffusion.measure.bench import reward as rw
from shortcut_diffusion.models.testbed import load_digits_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="wall-clock of optimization per estimator")
    parser.add_argument("--estimators", nargs="+", default=["full", "alignprop", "sdo"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run every estimator on each of these seeds (the start noise and the scheduler's), one "
                             "table each, and add a table over the seeds (instead of --seed)")
    parser.add_argument("--name", default="latent_time_to_reward", help="file name of the outputs (without suffix)")
    parser.add_argument("--out", default="runs/latent_ttr")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="what the budget and s/iter are read from: wall-clock, or the process's CPU time "
                             "(time.process_time: for one thread on a shared machine)")
    parser.add_argument("--docs", default=None, help="also copy the outputs there, as latent_time_to_reward_cpu.*")
    args = parser.parse_args(argv)
    command = "python benchmarks/latent_time_to_reward.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_digits_model()
    runs = {seed: rw.latent_time_to_reward(model, "digit-class:7", 1, estimators=args.estimators,
                                           seconds=args.seconds, steps=args.steps, batch=args.batch, seed=seed,
                                           clock=time.process_time if args.clock == "cpu" else None)
            for seed in args.seeds or [args.seed]}
    mean, std = rw.real_fd_spread(model.classifier, 7, args.batch)
    tables = [(f"## seed {seed}\n\n" if args.seeds else "") + rw.markdown(rows, reference="full") + "\n"
              + "\n".join(rw.targets(rows)) for seed, rows in runs.items()]
    text = (f"Command: `{command}`\n\n" + (seed_table(runs) if args.seeds else "") + "\n\n".join(tables)
            + f"\n\nFor scale: {args.batch} real held-out 7s have class-FD {mean:.1f} +- {std:.1f} against all real 7s "
            "(200 random draws).\n")
    rows = next(iter(runs.values()))
    outputs = {"json": json.dumps(runs if args.seeds else rows, indent=1), "md": text}
    write_outputs(outputs, out, args.name, args.docs)
    rw.plot(rows, out / f"{args.name}.png")
    if args.docs:
        rw.plot(rows, Path(args.docs) / f"{args.name}_cpu.png")
    print(text)
    return 0


def seed_table(runs: dict) -> str:
    """Each estimator over the seeds: mean final reward, the panel's counts summed, mean realism."""
    estimators = [r["estimator"] for r in next(iter(runs.values()))]
    lines = [f"### over {len(runs)} seeds ({', '.join(map(str, runs))})", "",
             "| estimator | final reward (mean) | final reward (each seed) | all judges read the goal | realism (mean) "
             "| iterations (mean) | s/iter (median) | reached 95% |", "|---|---|---|---|---|---|---|---|"]
    for name in estimators:
        rows = [next(r for r in seed_rows if r["estimator"] == name) for seed_rows in runs.values()]
        read = sum(r["panel"]["read_by_all"] for r in rows)
        count = sum(r["panel"]["count"] for r in rows)
        lines.append(f"| {name} | {statistics.mean(r['final_reward'] for r in rows):.4f} | "
                     + ", ".join(f"{r['final_reward']:.2f}" for r in rows) + f" | {read}/{count} | "
                     f"{statistics.mean(r['panel']['realism'] for r in rows):.2f}x | "
                     f"{statistics.mean(r['iterations'] for r in rows):.0f} | "
                     f"{statistics.median(r['seconds_per_iter'] for r in rows):.2f} | "
                     f"{sum(r['seconds_to_95'] is not None for r in rows)}/{len(rows)} |")
    return "\n".join(lines) + "\n\n"


if __name__ == "__main__":
    raise SystemExit(main())
