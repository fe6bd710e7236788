"""``sdo demo`` over seeds: does its result on the judge panel hold beyond the default seed?

Runs ``sdo demo --iters I --seed S`` for each iteration count and seed (one process at a time,
one thread) and tabulates the panel's readings (each judge, all three), realism and saturation
from each run's ``summary.json``. The demo's targets: every judge reads at least 7 of 8 as 7, and
realism (median distance to the nearest real 7 over real 7s' own nearest-neighbour distance) is at
most 1.5x.

    python benchmarks/demo_seeds.py --iters 40 36 --seeds 0 1 2 3 --out runs/demo_seeds --docs docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TARGET_READ, TARGET_REALISM = 7, 1.5


def run_one(iters: int, seed: int, out: Path) -> dict:
    run_dir = out / f"iters{iters}_seed{seed}"
    cmd = [sys.executable, "-m", "shortcut_diffusion", "demo", "--iters", str(iters), "--seed", str(seed),
           "--no-progress", "--overwrite", "--out", str(run_dir)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    panel = json.loads((run_dir / "summary.json").read_text())["panel"]
    return {"iters": iters, "seed": seed, **{k: panel[k] for k in ("read_by_judge", "read_by_all", "count", "realism",
                                                                    "saturation")}}


def markdown(rows: list[dict], command: str) -> str:
    judges = list(rows[0]["read_by_judge"])
    lines = [f"Command: `{command}` (2-core Intel Xeon, CPU only, one thread)", "",
             f"Targets: every judge reads >= {TARGET_READ} of 8 as 7, realism <= {TARGET_REALISM}x.", "",
             "| run | " + " | ".join(judges) + " | all judges | realism | saturation | both targets |",
             "|---|" + "---|" * len(judges) + "---|---|---|---|"]
    for r in rows:
        met = min(r["read_by_judge"].values()) >= TARGET_READ and r["realism"] <= TARGET_REALISM
        lines.append(f"| {r['iters']} iterations, seed {r['seed']} | " + " | ".join(f"{r['read_by_judge'][j]}/{r['count']}" for j in judges)
                     + f" | {r['read_by_all']}/{r['count']} | {r['realism']:.2f}x | {r['saturation']:.0%} | "
                     + ("yes" if met else "no") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, nargs="+", default=[40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    parser.add_argument("--docs", type=Path, default=None, help="also write demo_seeds_cpu.{md,json} there")
    parser.add_argument("--render", type=Path, default=None, help="only rebuild the table from a saved JSON")
    args = parser.parse_args(argv)
    command = "python benchmarks/demo_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        rows, command = saved["rows"], saved["command"]
    else:
        rows = [run_one(i, s, args.out) for i in args.iters for s in args.seeds]
    text = markdown(rows, command)
    for folder, stem in [(args.out, "demo_seeds")] + ([(args.docs, "demo_seeds_cpu")] if args.docs else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.md").write_text(text)
        (folder / f"{stem}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
