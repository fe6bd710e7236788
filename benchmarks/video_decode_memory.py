"""Memory of a differentiable video decode: every frame vs only the frames a reward reads, and
frame-chunked decoding, on the tiny random video pipelines of the tests (CPU).

Each configuration runs in a fresh process: one sample's latents are decoded with grad, a reward
on the first frame is backpropagated, and the script reports what autograd kept for the backward
pass (``SavedTensorMeter``) and the rise of the process's peak resident memory over its resident
memory before the decode.

    python benchmarks/video_decode_memory.py --out docs/results/video_decode_memory_cpu.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [  # family, pixels, frames, how the decode runs
    ("animatediff", 64, 16, "full"),
    ("animatediff", 64, 16, "first"),
    ("animatediff", 64, 16, "chunk:4"),
    ("wan", 64, 17, "full"),
    ("wan", 64, 17, "first"),
]


def measure(directory: str, size: int, frames: int, how: str) -> dict:
    """One configuration, in this process."""
    import torch

    from shortcut_diffusion import load_model
    from shortcut_diffusion.meters import SavedTensorMeter, model_weights

    torch.set_num_threads(1)
    model = load_model(directory, height=size, width=size, num_frames=frames, progress=False)
    if how.startswith("chunk:"):
        model.memory_options(decode_chunk=int(how.partition(":")[2]))
    x = torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    with SavedTensorMeter(exclude=model_weights(model)) as meter:
        video = model.decode_frames(x, [0]) if how == "first" else model.images(x)
    video[:, 0].mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"saved_mib": meter.bytes / 2**20, "peak_rise_mb": max(peak - before, 0) / 1e6,
            "frames_decoded": len(model.frames_decoded([0])) if how == "first" else frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        directory, size, frames, how = args.one
        print(json.dumps(measure(directory, int(size), int(frames), how)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_pipelines

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        built = {f: tiny_pipelines.build_video(f, Path(tmp) / f) for f in {c[0] for c in CONFIGS}}
        for family, size, frames, how in CONFIGS:
            done = subprocess.run([sys.executable, __file__, "--one", str(built[family]), str(size), str(frames), how],
                                  check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(f"| {family}, {how} | {size}x{size}, {frames} frames | {result['frames_decoded']} | "
                        f"{result['saved_mib']:.1f} | {result['peak_rise_mb']:.0f} |")
    table = "\n".join(["| pipeline, decode | video | frames decoded | saved MiB | peak rise MB |",
                       "|---|---|---|---|---|", *rows])
    print(table)
    if args.out:
        Path(args.out).write_text(
            "# Video decode memory: every frame vs the frames a reward reads (CPU)\n\n"
            "Machine: 2-core Intel Xeon, CPU only, one thread; 2026-12-01. Command:\n\n"
            "```\nOMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/video_decode_memory.py "
            f"--out {args.out}\n```\n\n"
            "One sample, decoded with grad, a reward on the first frame backpropagated; tiny random "
            "pipelines of `tests/tiny_pipelines.py`. saved MiB: what autograd kept for the backward pass "
            "(SavedTensorMeter); peak rise MB: the process's peak resident memory over its resident memory "
            "before the decode.\n\n## Results\n\n" + table + "\n")


if __name__ == "__main__":
    main()
