"""Training-free guidance (FreeDoM) against SDO latent optimization, at equal wall-clock.

The digits task of ``sdo demo``: eight samples generated for "1", steered to "7" by the testbed
classifier's log-probability of 7. FreeDoM spends its compute in one guided pass (more with time
travel); SDO spends it in optimization iterations. Each FreeDoM setting is one pass and is timed;
SDO runs once for ``--seconds``, its iterates are recorded with their wall-clock and re-sampled
afterwards, outside the clock, so its reward at any budget can be read off. Quality: the held-out
judge's reading (never a reward). One thread, one run at a time.

    OMP_NUM_THREADS=1 python benchmarks/guide_vs_sdo.py --out runs/guide_vs_sdo --docs docs/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shortcut_diffusion import generate, load_model
from shortcut_diffusion.tasks.guide.freedom import freedom_sample
from shortcut_diffusion.tasks.latent.optimize import optimize_latent
from shortcut_diffusion.rewards import get_reward

SETTINGS = [  # (scale, travel, window): one guided pass each
    (0.5, 1, (0, 0)), (1.0, 1, (0, 0)), (2.0, 1, (0, 0)), (1.0, 3, (10, 40)), (2.0, 3, (10, 40)),
]


def readings(model, images: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        return (float((model.classifier(images).argmax(1) == 7).float().mean()),
                float((model.judge(images).argmax(1) == 7).float().mean()))


def run(args: argparse.Namespace) -> dict:
    model = load_model("digits")
    reward = get_reward("digit-class:7", model=model)
    labels = [1] * args.batch
    noise = torch.randn((args.batch, *model.sample_shape), generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for scale, travel, window in SETTINGS:
        result = freedom_sample(model, noise, labels, reward, steps=args.steps, scale=scale, travel=travel,
                                travel_window=window, seed=args.seed + 1)
        clf, judge = readings(model, result.images)
        rows.append({"method": f"freedom scale={scale}" + (f" travel={travel} in {list(window)}" if travel > 1 else ""),
                     "seconds": result.seconds, "reward": float(result.rewards.mean()), "classifier_7": clf,
                     "judge_7": judge})
    iterates: list[tuple[float, torch.Tensor]] = []
    optimize_latent(model, reward, torch.tensor(labels), steps=args.steps, iters=10**6, seed=args.seed, progress=False,
                    max_seconds=args.seconds,
                    callback=lambda row, z, images: iterates.append((row["wall_clock"], z.clone())))
    curve = []
    with torch.no_grad():  # re-sample every iterate without grad, outside the clock
        for seconds, z in iterates:
            images = generate(model, z, labels, steps=args.steps, seed=args.seed + 1).images
            clf, judge = readings(model, images)
            curve.append({"seconds": seconds, "reward": float(reward(images, torch.tensor(labels)).mean()),
                          "classifier_7": clf, "judge_7": judge})
    return {"freedom": rows, "sdo": curve}


def sdo_at(curve: list[dict], seconds: float) -> dict:
    """SDO's last iterate within ``seconds`` of optimization (its start when none is)."""
    within = [c for c in curve if c["seconds"] <= seconds]
    return within[-1] if within else curve[0]


def markdown(data: dict, command: str, seconds: float) -> str:
    lines = [f"Command: `{command}`", "",
             "| method | seconds | reward | classifier reads 7 | judge reads 7 | SDO at the same seconds: reward / classifier / judge |",
             "|---|---|---|---|---|---|"]
    for r in data["freedom"]:
        s = sdo_at(data["sdo"], r["seconds"])
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r['reward']:.2f} | {r['classifier_7']:.0%} | "
                     f"{r['judge_7']:.0%} | {s['reward']:.2f} / {s['classifier_7']:.0%} / {s['judge_7']:.0%} |")
    for budget in (15, 30, seconds):
        s = sdo_at(data["sdo"], budget)
        lines.append(f"| sdo latent, {budget:g} s | {s['seconds']:.1f} | {s['reward']:.2f} | {s['classifier_7']:.0%} | "
                     f"{s['judge_7']:.0%} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="SDO's optimization budget")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/guide_vs_sdo"))
    parser.add_argument("--docs", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python benchmarks/guide_vs_sdo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = run(args)
    text = markdown(data, command, args.seconds)
    for directory, stem in [(args.out, "guide_vs_sdo")] + ([(args.docs, "guide_vs_sdo_cpu")] if args.docs else []):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{stem}.json").write_text(json.dumps({"command": command, **data}, indent=1) + "\n")
        (directory / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
