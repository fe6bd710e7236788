"""The memory ceiling table: how far full backpropagation goes on one card, and what SDO costs.

For each image family (``sd15``, ``sdxl``, ``sd3``, ``flux``) a network with the real architecture
and random weights (``load_model("random:FAMILY:RES")``: cost does not depend on the weights'
values) runs the guided computation users run (CFG at the family's scale; Flux's guidance input),
in ``--dtype``, batch 1, latent target, each configuration in its own process:

- the largest N of ``--ladder`` at which full backpropagation fits on the device (the first
  out-of-memory stops the ladder), with its peak memory;
- at N = ``--steps`` (28 for Flux, as it is run), peak memory and seconds per iteration of
  every gradient method of ``--estimators`` (default: SDO, checkpointed, AlignProp as published
  and every 2025-26 method of the registry: LeapAlign, FlowBP's three variants, DRaFT-LV,
  Direct-Align, DRTune as published), "n/a" where a method does not apply to the family's
  schedule, or "out of memory".

The video family ``wan`` is Wan 2.1 T2V 1.3B's transformer and VAE (``random:wan:HxW``, published
configuration, random weights, 480 x 832 by default, transformer blocks gradient-checkpointed
unless ``--no-block-checkpointing``) doing what video reward fine-tuning does: one iteration of
LoRA fine-tuning (rank ``--lora-rank`` on the attention) with a multi-frame reward
(``--reward-frames``, default every 20th decoded frame). It reports every method's peak memory
and seconds per iteration at ``--frames`` (81) frames and ``--steps`` (50) steps (Adjoint
Matching, a fine-tuning loss, applies here), then the largest N of ``--ladder`` at which full
backpropagation fits for each frame count of ``--frame-ladder``.

Writes ``scale.json`` and ``scale.md`` (with the card's name), rewritten as the video family's
rows are measured (a run stopped by a time limit keeps what it measured).

    python benchmarks/scale.py --family sd15 sdxl sd3 flux --dtype bf16 --device cuda --out runs/scale
    python benchmarks/scale.py --family wan --dtype bf16 --device cuda --out runs/scale-wan
    python benchmarks/scale.py --family sd15 sdxl sd3 flux wan --toy --ladder 1 2 --steps 2 --in-process   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from shortcut_diffusion.measure.bench.cost import _run_worker, is_out_of_memory, measure

FLUX_STEPS = 28
VIDEO = ("wan",)
METHODS = ["sdo", "checkpointed", "alignprop", "drtune", "leapalign", "flowbp-sparse", "flowbp-bridge",
           "flowbp-lagrange", "draft-lv", "direct-align", "adjoint-matching"]
"""The default methods, by their names in the registry (``shortcut_diffusion.gradients.METHODS``)."""


def run_config(args: argparse.Namespace, model: str, spec: str, steps: int, frames: Optional[int] = None
               ) -> Optional[dict[str, Any]]:
    """One configuration; None when it ran out of memory."""
    options = {"model_name": model, "spec": spec, "steps": steps, "batch": 1, "repeats": args.repeats,
               "reward_spec": "neg-mse", "seed": 0, "device_name": args.device, "options": {"dtype": args.dtype}}
    if frames is not None:  # video: LoRA fine-tuning with a multi-frame reward
        options["options"].update(frames=frames, reward_frames=args.reward_frames)
        options["lora_rank"] = args.lora_rank
    try:
        return measure(**options) if args.in_process else _run_worker(options)
    except RuntimeError as error:
        if is_out_of_memory(error):
            return None
        raise


def refusal(family: str, spec: str, steps: int, task: str) -> Optional[str]:
    """Why the method ``spec`` of the registry does not apply to ``family``'s schedule or to
    ``task`` (None when it does), asked before anything is loaded."""
    from shortcut_diffusion.errors import UsageError
    from shortcut_diffusion.gradients import get_method
    from shortcut_diffusion.models.shaped import NETWORKS
    from shortcut_diffusion.models.shaped_video import ShapedWan

    scheduler = ({"wan": ShapedWan, **NETWORKS})[family].new_scheduler()
    try:
        get_method(spec).check(scheduler, steps, task=task)
    except UsageError as error:
        return str(error)
    return None


def measured(args: argparse.Namespace, family: str, model: str, steps: int, frames: Optional[int] = None
             ) -> dict[str, Any]:
    """Every method of ``--estimators`` at ``steps`` (and ``frames``): a row, None (out of memory)
    or ``{"refused": why}`` where the method does not apply."""
    task = "bench" if frames is None else "finetune:lora"
    rows: dict[str, Any] = {}
    for spec in args.estimators:
        why = refusal(family, spec, steps, task)
        rows[spec] = {"refused": why} if why else run_config(args, model, spec, steps, frames)
    return rows


def family_rows(args: argparse.Namespace, family: str, save: Callable[[dict], Any] = lambda row: None
                ) -> dict[str, Any]:
    if family in VIDEO:
        return video_rows(args, family, save)
    model = f"random:{family}" + (f":{args.resolution}" if args.resolution else "") + (":tiny" if args.tiny else "")
    ceiling, at_ceiling = None, None
    for steps in args.ladder:  # the largest N at which full backpropagation fits
        row = run_config(args, model, "full", steps)
        if row is None:
            break
        ceiling, at_ceiling = steps, row
    steps = args.steps if family != "flux" or args.steps_flux is None else args.steps_flux
    return {"family": family, "model": model, "steps": steps, "full_ceiling": ceiling, "full_at_ceiling": at_ceiling,
            "estimators": measured(args, family, model, steps)}


def video_rows(args: argparse.Namespace, family: str, save: Callable[[dict], Any]) -> dict[str, Any]:
    """The video family: every method at ``--frames`` and ``--steps`` (the headline row, first),
    then full's ceiling over frames x steps; ``save`` is called with the row as it grows, so a
    run stopped by a time limit keeps what it measured."""
    model = f"random:{family}" + ("" if args.tiny else f":{args.video_size}") + (":tiny" if args.tiny else "")
    model += ":blocks" if args.block_checkpointing else ""
    row = {"family": family, "model": model, "video": True, "frames": args.frames, "steps": args.steps,
           "lora_rank": args.lora_rank, "reward_frames": args.reward_frames, "ceilings": [], "largest_full": None,
           "estimators": measured(args, family, model, args.steps, args.frames)}
    save(row)
    for frames in args.frame_ladder:  # per frame count, the largest N at which full fits
        ceiling, at_ceiling = None, None
        for steps in args.ladder:
            found = run_config(args, model, "full", steps, frames)
            if found is None:
                break
            ceiling, at_ceiling = steps, found
        row["ceilings"].append({"frames": frames, "full_ceiling": ceiling, "full_at_ceiling": at_ceiling})
        fits = [c for c in row["ceilings"] if c["full_ceiling"] is not None]
        largest = max(fits, key=lambda c: c["frames"] * c["full_ceiling"], default=None)
        row["largest_full"] = None if largest is None else [largest["frames"], largest["full_ceiling"]]
        save(row)
        if ceiling is None:  # more frames cannot fit either
            break
    return row


def cell(row: Optional[dict[str, Any]]) -> str:
    if row is None:
        return "out of memory"
    if "refused" in row:
        return "n/a"
    return f"{row['peak_mem_mb']:.0f}, {row['seconds_per_iter']:.2f}"


def markdown(results: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    images = [r for r in results if not r.get("video")]
    rows = [v for r in results for v in [*(c["full_at_ceiling"] for c in r.get("ceilings", [])),
                                          r.get("full_at_ceiling"), *r["estimators"].values()] if v and "refused" not in v]
    first = rows[0] if rows else {}
    lines = [f"Command: `{command}`", "", f"Device: {first.get('device', args.device)}; dtype {args.dtype}; batch 1; "
             f"full ladder N = {', '.join(map(str, args.ladder))}. Cells: peak MB, s/iter; n/a: the method does not "
             "apply to the family's schedule or task.", ""]
    if images:
        lines += ["| family | model | guidance | largest N full fits (peak MB) | N | "
                  + " | ".join(f"{spec}: peak MB, s/iter" for spec in args.estimators) + " |",
                  "|---|---|---|---|---|" + "---|" * len(args.estimators)]
    for r in images:
        ref = r["full_at_ceiling"] or next((v for v in r["estimators"].values() if v and "refused" not in v), {}) or {}
        ceiling = "none" if r["full_ceiling"] is None else f"{r['full_ceiling']} ({r['full_at_ceiling']['peak_mem_mb']:.0f})"
        lines.append(f"| {r['family']} | `{r['model']}` | {ref.get('guidance', '?')} | {ceiling} | {r['steps']} | "
                     + " | ".join(cell(v) for v in r["estimators"].values()) + " |")
    for r in results:
        if r.get("video"):
            lines += ["", *video_markdown(r)]
    return "\n".join(lines) + "\n"


def video_markdown(r: dict[str, Any]) -> list[str]:
    """A video family's two tables: full's ceiling per frame count, then every method."""
    largest = "none" if r["largest_full"] is None else "{} frames x {} steps".format(*r["largest_full"])
    lines = [f"## {r['family']}: `{r['model']}`, LoRA rank {r['lora_rank']}, reward frames `{r['reward_frames']}`", "",
             f"Largest frames x steps at which full backpropagation fits: {largest}.", "",
             "| frames | largest N full fits | peak MB there |", "|---|---|---|"]
    for c in r["ceilings"]:
        at = c["full_at_ceiling"]
        peak = "-" if at is None else f"{at['peak_mem_mb']:.0f}"
        lines.append(f"| {c['frames']} | {c['full_ceiling'] or 'none'} | {peak} |")
    lines += ["", f"At {r['frames']} frames and N = {r['steps']}:", "",
              "| method | peak MB | s/iter | saved MiB | NFE fwd/bwd |", "|---|---|---|---|---|"]
    for spec, v in r["estimators"].items():
        if v is None or "refused" in v:
            lines.append(f"| {spec} | {'out of memory' if v is None else 'n/a'} | | | |")
        else:
            lines.append(f"| {spec} | {v['peak_mem_mb']:.0f} | {v['seconds_per_iter']:.2f} | "
                         f"{v['saved_bytes'] / 2**20:.1f} | {v['nfe_forward']}/{v['nfe_backward']} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["sd15", "sdxl", "sd3", "flux"])
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the family's own)")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--ladder", type=int, nargs="+", default=[1, 2, 5, 10, 20, 30, 40, 50])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--steps-flux", type=int, default=FLUX_STEPS)
    parser.add_argument("--estimators", nargs="+", default=METHODS, help="gradient methods (registry specs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", "--toy", action="store_true", help="toy-sized configurations of the same architectures")
    video = parser.add_argument_group("video families (wan)")
    video.add_argument("--video-size", default="480x832", help="HEIGHTxWIDTH in pixels")
    video.add_argument("--frames", type=int, default=81, help="frames of the methods' row")
    video.add_argument("--frame-ladder", type=int, nargs="+", default=[1, 5, 9, 17, 33, 49, 81],
                       help="frame counts at which full backpropagation's ceiling is found")
    video.add_argument("--lora-rank", type=int, default=4)
    video.add_argument("--reward-frames", default="stride:20", help="the decoded frames the reward scores")
    video.add_argument("--no-block-checkpointing", dest="block_checkpointing", action="store_false",
                       help="keep every transformer block's activations (default: block-wise gradient checkpointing)")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps_flux = None
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: list[dict[str, Any]] = []
    for family in args.family:
        results.append(family_rows(args, family, lambda row: write(args, command, [*results, row])))
    print(write(args, command, results))
    return 0


def write(args: argparse.Namespace, command: str, results: list[dict[str, Any]]) -> str:
    """``scale.json`` and ``scale.md`` of ``results`` (rewritten as rows are measured)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps({"command": command, "results": results}, indent=1) + "\n")
    text = markdown(results, command, args)
    (args.out / "scale.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
