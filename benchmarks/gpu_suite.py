"""One prepared run for a GPU: the product path, the bench, the compiled bench and the memory ceiling.

Stages, in order of priority, each its own process with a time limit, all inside one overall
budget (a stage that would start with too little time left is skipped and reported as such):

1. ``pipeline``: build a Stable Diffusion 1.5-sized pipeline with random weights (nothing can be
   downloaded there) and save it.
2. ``latent-fp16``, ``latent-bf16``: ``sdo latent`` on it, guided, at ``--resolution``.
3. ``finetune-fp16``, ``finetune-bf16``: ``sdo finetune --target lora`` on it.
4. ``bench``: ``sdo bench`` on ``random:sd15:RES`` (the UNet only), fp16, N = 50, guided: raw and
   paired ratios of sdo, full, checkpointed and alignprop to plain sampling (full may run out of
   memory at N = 50: that is recorded, not fatal).
5. ``bench-compile``: the same for sampling and sdo with ``--compile``.
6. ``scale``: ``benchmarks/scale.py`` on SDXL, SD3 and Flux in bf16 (the largest N at which full
   backpropagation fits, and SDO, checkpointed and alignprop at N = 50, 28 for Flux).
7. ``scale-wan``: ``benchmarks/scale.py --family wan``: Wan 2.1 T2V 1.3B at 480 x 832 in bf16, LoRA
   fine-tuning with a multi-frame reward: the largest N at which full backpropagation fits at 81
   frames, and SDO's peak memory and s/iter at 81 frames and 50 steps.

``--stages NAME ...`` runs only those stages (``--stages scale-wan``: the Wan run alone).

Writes ``suite.md`` (every stage: command, exit status, seconds, the tail of its output and its
report) and ``suite.json`` to ``--out``, plus the bench and scale reports; the pipeline and the
run directories go to ``--work`` (a temporary directory by default), so ``--out`` stays small.

    python benchmarks/gpu_suite.py --device cuda --out runs/gpu_suite
    python benchmarks/gpu_suite.py --tiny --device cpu --out runs/gpu_suite_smoke   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of a cat"


def stages(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str], int]]:
    """``(name, command, time limit in seconds)`` of every stage."""
    sdo = [sys.executable, "-m", "shortcut_diffusion"]
    tiny = args.tiny
    res, steps = (16, 4) if tiny else (args.resolution, 50)
    pipe = str(work / "sd15")
    shaped = f"random:sd15:{64 if tiny else res}" + (":tiny" if tiny else "")
    common = ["--prompt", PROMPT, "--height", str(res), "--width", str(res), "--steps", str(steps), "--batch", "1",
              "--device", args.device, "--no-progress"]
    out = []
    build = ("import sys; sys.path.insert(0, 'tests'); import tiny_pipelines as t; from pathlib import Path; "
             + (f"t.build('sd', Path({pipe!r}))" if tiny else f"t.build_sd15_full_size(Path({pipe!r}))"))
    out.append(("pipeline", [sys.executable, "-c", build], 240))
    for dtype in ("fp16", "bf16"):
        out.append((f"latent-{dtype}", [*sdo, "latent", "--model", pipe, "--dtype", dtype, "--reward", "ink", "--iters", "3",
                                        *common, "--out", str(work / f"latent-{dtype}")], 180))
    out.append(("latent-picard", [*sdo, "latent", "--model", pipe, "--dtype", "fp16", "--reward", "ink", "--iters", "4",
                                  "--scheduler", "ddim", "--rollout", "picard", "--picard-every", "0", "--picard-check",
                                  "1", *common, "--out", str(work / "latent-picard")], 240))
    for dtype in ("fp16", "bf16"):
        out.append((f"finetune-{dtype}", [*sdo, "finetune", "--model", pipe, "--dtype", dtype, "--target", "lora",
                                          "--reward", "ink", "--max-steps", "3", "--eval-every", "0",
                                          "--eval-per-class", "1", "--checkpoint-every", "0", *common,
                                          "--out", str(work / f"finetune-{dtype}")], 240))
    bench = [*sdo, "bench", "--model", shaped, "--dtype", "fp16", "--steps", str(steps),
             "--batch", "1", "--repeats", "1" if tiny else "2", "--reward", "neg-mse", "--device", args.device]
    # at toy sizes two estimators show the stage works (each measurement is a fresh process)
    estimators = ["sdo", "full"] if tiny else ["sdo", "full", "checkpointed", "alignprop"]
    out.append(("bench", [*bench, "--estimators", *estimators, "--out", str(work / "bench")], 420))
    out.append(("bench-compile", [*bench, "--estimators", "sdo", "--compile", "--out", str(work / "bench-compile")], 300))
    scale = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--family", "sdxl", "sd3", "flux", "--dtype", "bf16",
             "--device", args.device, "--out", str(work / "scale")]
    scale += ["--tiny", "--ladder", "1", "2", "--steps", "2", "--repeats", "1", "--in-process"] if tiny else ["--ladder", "1", "5", "10", "20", "50"]
    out.append(("scale", scale, 600))
    wan = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--family", "wan", "--dtype", "bf16",
           "--device", args.device, "--repeats", "1", "--out", str(work / "scale-wan")]
    wan += (["--toy", "--frame-ladder", "1", "5", "--frames", "5", "--ladder", "1", "2", "--steps", "3",
             "--reward-frames", "stride:2", "--estimators", "sdo", "leapalign", "--in-process"] if tiny else
            ["--frame-ladder", "81", "--ladder", "5", "10", "20", "--estimators", "sdo"])
    out.append(("scale-wan", wan, 600))
    return [stage for stage in out if not args.stages or stage[0] in args.stages]


def shown(command: list[str], work: Path) -> str:
    """The command as a reader would type it (no machine paths)."""
    return (" ".join(command).replace(sys.executable, "python").replace(str(work), "WORK")
            .replace(str(ROOT) + "/", ""))


def run_stage(name: str, command: list[str], limit: float) -> dict:
    began = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=ROOT)
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        rc = "timeout"
        text = "".join(part.decode() if isinstance(part, bytes) else (part or "") for part in (stopped.stdout, stopped.stderr))
    return {"stage": name, "command": command, "rc": rc, "seconds": round(time.perf_counter() - began, 1),
            "tail": text[-3000:]}


def report_of(name: str, work: Path) -> Optional[str]:
    """The stage's own report, where it wrote one."""
    for path in (work / name / "report.md", work / name / "scale.md", work / name / "summary.json"):
        if path.is_file():
            return path.read_text()
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together")
    parser.add_argument("--work", type=Path, default=None, help="pipeline and run directories (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a smoke test of every stage on the CPU")
    parser.add_argument("--stages", nargs="+", default=None, help="run only these stages (default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="sdo-gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline, results = time.perf_counter() + args.budget, []
    for name, command, limit in stages(args, work):
        left = deadline - time.perf_counter()
        if left < 20:
            results.append({"stage": name, "command": command, "rc": "skipped: budget spent", "seconds": 0, "tail": ""})
        else:
            results.append(run_stage(name, command, min(limit, left)))
        results[-1]["command"] = shown(command, work)
        print(f"{name}: rc {results[-1]['rc']}, {results[-1]['seconds']} s", flush=True)
    write(args, work, results)
    return 0 if all(r["rc"] == 0 for r in results) else 1


def write(args: argparse.Namespace, work: Path, results: list[dict]) -> None:
    device = "cpu"
    try:
        import torch

        if args.device.startswith("cuda") and torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    lines = [f"# GPU suite: {device}", ""]
    for r in results:
        lines += [f"## {r['stage']}: rc {r['rc']}, {r['seconds']} s", "", f"`{r['command']}`", ""]
        report = report_of(r["stage"], work)
        lines += [report, ""] if report else ["```", r["tail"][-1500:], "```", ""]
    (args.out / "suite.md").write_text("\n".join(lines))
    (args.out / "suite.json").write_text(json.dumps({"device": device, "stages": results}, indent=1) + "\n")
    for name, file in (("bench", "report.md"), ("bench-compile", "report.md"), ("scale", "scale.md"),
                       ("scale-wan", "scale.md")):
        if (work / name / file).is_file():
            shutil.copy(work / name / file, args.out / f"{name}_{file}")


if __name__ == "__main__":
    raise SystemExit(main())
