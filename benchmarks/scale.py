"""The memory ceiling table: how far full backpropagation goes on one card, and what SDO costs.

For each family (``sd15``, ``sdxl``, ``sd3``, ``flux``) a network with the real architecture and
random weights (``load_model("random:FAMILY:RES")``: cost does not depend on the weights' values)
runs the guided computation users run (CFG at the family's scale; Flux's guidance input), in
``--dtype``, batch 1, latent target, each configuration in its own process:

- the largest N of ``--ladder`` at which full backpropagation fits on the device (the first
  out-of-memory stops the ladder), with its peak memory;
- at N = ``--steps`` (28 for Flux, as it is run), peak memory and seconds per iteration of
  every estimator of ``--estimators`` (SDO, checkpointed, AlignProp as published, ...), or
  "out of memory".

Writes ``scale.json`` and ``scale.md`` (with the card's name).

    python benchmarks/scale.py --family sd15 sdxl sd3 flux --dtype bf16 --device cuda --out runs/scale
    python benchmarks/scale.py --family sd15 sdxl sd3 flux --tiny --ladder 1 2 --steps 2 --in-process   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from shortcut_diffusion.measure.bench.cost import _run_worker, is_out_of_memory, measure

FLUX_STEPS = 28


def run_config(args: argparse.Namespace, model: str, spec: str, steps: int) -> Optional[dict[str, Any]]:
    """One configuration; None when it ran out of memory."""
    options = {"model_name": model, "spec": spec, "steps": steps, "batch": 1, "repeats": args.repeats,
               "reward_spec": "neg-mse", "seed": 0, "device_name": args.device,
               "options": {"dtype": args.dtype}}
    try:
        return measure(**options) if args.in_process else _run_worker(options)
    except RuntimeError as error:
        if is_out_of_memory(error):
            return None
        raise


def family_rows(args: argparse.Namespace, family: str) -> dict[str, Any]:
    model = f"random:{family}" + (f":{args.resolution}" if args.resolution else "") + (":tiny" if args.tiny else "")
    ceiling, at_ceiling = None, None
    for steps in args.ladder:  # the largest N at which full backpropagation fits
        row = run_config(args, model, "full", steps)
        if row is None:
            break
        ceiling, at_ceiling = steps, row
    steps = args.steps if family != "flux" or args.steps_flux is None else args.steps_flux
    estimators = {spec: run_config(args, model, spec, steps) for spec in args.estimators}
    return {"family": family, "model": model, "steps": steps, "full_ceiling": ceiling, "full_at_ceiling": at_ceiling,
            "estimators": estimators}


def markdown(results: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    first = next((r["full_at_ceiling"] or next(iter(r["estimators"].values()), None) for r in results), None) or {}
    lines = [f"Command: `{command}`", "", f"Device: {first.get('device', args.device)}; dtype {args.dtype}; batch 1; "
             f"full ladder N = {', '.join(map(str, args.ladder))}.", "",
             "| family | model | guidance | largest N full fits (peak MB) | N | "
             + " | ".join(f"{spec}: peak MB, s/iter" for spec in args.estimators) + " |",
             "|---|---|---|---|---|" + "---|" * len(args.estimators)]
    for r in results:
        ref = r["full_at_ceiling"] or next((v for v in r["estimators"].values() if v), {}) or {}
        ceiling = "none" if r["full_ceiling"] is None else f"{r['full_ceiling']} ({r['full_at_ceiling']['peak_mem_mb']:.0f})"
        cells = ["out of memory" if v is None else f"{v['peak_mem_mb']:.0f}, {v['seconds_per_iter']:.2f}"
                 for v in r["estimators"].values()]
        lines.append(f"| {r['family']} | `{r['model']}` | {ref.get('guidance', '?')} | {ceiling} | {r['steps']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["sd15", "sdxl", "sd3", "flux"])
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the family's own)")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--ladder", type=int, nargs="+", default=[1, 2, 5, 10, 20, 30, 40, 50])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--steps-flux", type=int, default=FLUX_STEPS)
    parser.add_argument("--estimators", nargs="+", default=["sdo", "checkpointed", "alignprop"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="toy-sized configurations of the same architectures")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps_flux = None
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = [family_rows(args, family) for family in args.family]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps({"command": command, "results": results}, indent=1) + "\n")
    text = markdown(results, command, args)
    (args.out / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
