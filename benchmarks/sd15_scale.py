"""Cost at real scale: ``sdo bench`` on an SD 1.5-shaped UNet (860M parameters, random weights).

Time and memory do not depend on the weights' values, so a randomly initialised UNet with Stable
Diffusion 1.5's configuration measures what an iteration costs on the real model (the VAE and the
reward are excluded: the reward scores the latents). It runs guided, as Stable Diffusion is run:
classifier-free guidance at 7.5 (one batched network call on ``[uncond, cond]`` per step) unless
``--guidance 1``. One process per configuration, ratios paired as in ``sdo bench``.

    # CPU (what 2 cores and 24 GB allow in reasonable time: 128 x 128, N = 10 and 25)
    python benchmarks/sd15_scale.py --resolution 128 --steps 10 25 --out runs/sd15_cpu
    # a GPU: the paper's setting, 512 x 512 and 50 DDIM steps (record the card in the report)
    python benchmarks/sd15_scale.py --resolution 512 --steps 10 25 50 --device cuda --out runs/sd15_gpu
"""

from __future__ import annotations

import argparse
import sys

from shortcut_diffusion.measure.bench import BenchConfig, run_bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512, help="image size (latents are 1/8 of it)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--estimators", nargs="+", default=["full", "checkpointed", "truncated:k=1", "alignprop", "refl", "sdo"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default 7.5, as SD is run; 1: unguided)")
    parser.add_argument("--out", default="runs/sd15_scale")
    args = parser.parse_args(argv)
    config = BenchConfig(model=f"sd15-random:{args.resolution}", steps=args.steps, estimators=args.estimators,
                         batch=args.batch, repeats=args.repeats, reward="neg-mse", device=args.device, out=args.out,
                         dtype=args.dtype, guidance=args.guidance)
    command = "python benchmarks/sd15_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run_bench(config, command=command)
    print(f"report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
