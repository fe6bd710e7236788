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
import sys
import time
from pathlib import Path

from shortcut_diffusion.measure.bench import reward as rw
from shortcut_diffusion.models.testbed import load_digits_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="wall-clock of optimization per estimator")
    parser.add_argument("--estimators", nargs="+", default=["full", "alignprop", "sdo"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
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
    rows = rw.latent_time_to_reward(model, "digit-class:7", 1, estimators=args.estimators,
                                    seconds=args.seconds, steps=args.steps, batch=args.batch, seed=args.seed,
                                    clock=time.process_time if args.clock == "cpu" else None)
    mean, std = rw.real_fd_spread(model.classifier, 7, args.batch)
    text = (f"Command: `{command}`\n\n" + rw.markdown(rows, reference="full") + "\n" + "\n".join(rw.targets(rows))
            + f"\n\nFor scale: {args.batch} real held-out 7s have class-FD {mean:.1f} +- {std:.1f} against all real 7s "
            "(200 random draws).\n")
    outputs = {"json": json.dumps(rows, indent=1), "md": text}
    for ext, content in outputs.items():
        (out / f"latent_time_to_reward.{ext}").write_text(content)
    rw.plot(rows, out / "latent_time_to_reward.png")
    if args.docs:
        docs = Path(args.docs)
        for ext, content in outputs.items():
            (docs / f"latent_time_to_reward_cpu.{ext}").write_text(content)
        rw.plot(rows, docs / "latent_time_to_reward_cpu.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
