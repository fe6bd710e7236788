"""Training-free guidance (FreeDoM) against SDO latent optimization, at equal wall-clock.

The digits task of ``sdo demo``: eight samples generated for "1", steered to "7" by the testbed
classifier's log-probability of 7. FreeDoM spends its compute in one guided pass (more with time
travel); SDO spends it in optimization iterations. Each FreeDoM setting is one pass and is timed;
SDO runs once for ``--seconds``, its iterates are recorded with their wall-clock and re-sampled
afterwards, outside the clock, so its reward at any budget can be read off. Quality: the judge
panel (three judges of different model families, never rewards: an MLP, k-nearest neighbours on
pixels, a random forest), a result counting as "read as 7" only where all three agree; realism (the
median distance to the nearest real 7 over the median nearest-neighbour distance among real 7s)
and saturation (the fraction of pixels at the rails). Guidance is swept over its scale, time
travel and reward views; SDO runs with and without the demo's translated reward views. One
thread, one run at a time.

    OMP_NUM_THREADS=1 python benchmarks/guide_vs_sdo.py --out runs/guide_vs_sdo --docs docs/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shortcut_diffusion import generate, load_model
from shortcut_diffusion.models.testbed.panel import panel_report
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.tasks.guide.freedom import freedom_sample
from shortcut_diffusion.tasks.latent.optimize import optimize_latent

SETTINGS = [  # (scale, time travel, reward views): one guided pass each; time travel over the middle 60%
    (0.2, 1, False), (0.5, 1, False), (1.0, 1, False), (2.0, 1, False),
    (1.0, 3, False), (2.0, 3, False), (0.5, 1, True), (1.0, 3, True),
]
VIEWS = ["translation"]


def readings(model, images: torch.Tensor) -> dict:
    """The classifier's reading, and the panel's (each judge, all three), realism, saturation."""
    with torch.no_grad():
        report = panel_report(model, images, 7)
        n = report["count"]
        return {"classifier_7": float((model.classifier(images).argmax(1) == 7).float().mean()),
                **{f"{name}_7": hits / n for name, hits in report["read_by_judge"].items()},
                "all_7": report["read_by_all"] / n, "realism": report["realism"], "saturation": report["saturation"]}


def sdo_curve(model, labels: list, reward, args: argparse.Namespace) -> list[dict]:
    """SDO's iterates over ``args.seconds`` of optimization, re-sampled outside the clock."""
    iterates: list[tuple[float, torch.Tensor]] = []
    optimize_latent(model, reward, torch.tensor(labels), steps=args.steps, iters=10**6, seed=args.seed, progress=False,
                    max_seconds=args.seconds,
                    callback=lambda row, z, images: iterates.append((row["wall_clock"], z.clone())))
    scorer, curve = get_reward("digit-class:7", model=model), []
    with torch.no_grad():
        for seconds, z in iterates:
            images = generate(model, z, labels, steps=args.steps, seed=args.seed + 1).images
            curve.append({"seconds": seconds, "reward": float(scorer(images, torch.tensor(labels)).mean()),
                          **readings(model, images)})
    return curve


def run(args: argparse.Namespace) -> dict:
    model = load_model("digits")
    plain, views = get_reward("digit-class:7", model=model), get_reward("digit-class:7", model=model, augment=VIEWS)
    labels = [1] * args.batch
    noise = torch.randn((args.batch, *model.sample_shape), generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for scale, travel, with_views in SETTINGS:
        window = (args.steps // 5, 4 * args.steps // 5) if travel > 1 else (0, 0)  # 10-40 of 50
        result = freedom_sample(model, noise, labels, views if with_views else plain, steps=args.steps, scale=scale,
                                travel=travel, travel_window=window, seed=args.seed + 1)
        name = (f"freedom scale={scale}" + (f" travel={travel} in {list(window)}" if travel > 1 else "")
                + (" views" if with_views else ""))
        rows.append({"method": name, "seconds": result.seconds,
                     "reward": float(plain(result.images, torch.tensor(labels)).mean()), **readings(model, result.images)})
    return {"freedom": rows, "sdo": sdo_curve(model, labels, plain, args),
            "sdo_views": sdo_curve(model, labels, views, args)}


def sdo_at(curve: list[dict], seconds: float) -> dict:
    """SDO's last iterate within ``seconds`` of optimization (its start when none is)."""
    within = [c for c in curve if c["seconds"] <= seconds]
    return within[-1] if within else curve[0]


COLUMNS = ("all_7", "mlp_7", "knn_7", "forest_7", "classifier_7")


def row_line(name: str, r: dict) -> str:
    reads = " | ".join(f"{r[c]:.0%}" for c in COLUMNS)
    return f"| {name} | {r['seconds']:.1f} | {r['reward']:.2f} | {reads} | {r['realism']:.2f}x | {r['saturation']:.0%} |"


def markdown(data: dict, command: str, seconds: float) -> str:
    lines = [f"Command: `{command}`", "",
             "Reward: digit-class:7 of the plain images (also for runs optimized with reward views). Read as 7: "
             "by all three panel judges, by each (mlp, knn, forest), and by the reward's own classifier.", "",
             "| method | seconds | reward | all 3 read 7 | mlp | knn | forest | classifier | realism | saturation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row_line(r["method"], r) for r in data["freedom"]]
    for key, label in (("sdo", "sdo latent"), ("sdo_views", "sdo latent, views")):
        for budget in (2, 5, 15, 30, seconds):
            lines.append(row_line(f"{label}, {budget:g} s", sdo_at(data[key], budget)))
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
