"""The prepared GPU suite runs every stage end to end at toy sizes on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_stage_runs_at_toy_sizes(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny", "--device", "cpu",
                           "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "600"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    suite = json.loads((out / "suite.json").read_text())
    failed = {r["stage"]: r["tail"][-1500:] for r in suite["stages"] if r["rc"] != 0}
    assert done.returncode == 0 and not failed, failed or done.stderr[-2000:]
    assert [r["stage"] for r in suite["stages"]] == ["pipeline", "latent-fp16", "latent-bf16", "latent-picard", "finetune-fp16",
                                                       "finetune-bf16", "bench", "bench-compile", "scale", "scale-wan"]
    text = (out / "suite.md").read_text()
    bench = (out / "bench_report.md").read_text()
    assert "| sdo |" in bench and "| full |" in bench and "raw x sampling" in text
    assert "sdxl" in (out / "scale_scale.md").read_text()
    assert "5 frames x 2 steps" in (out / "scale-wan_scale.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["bench-compile_report.md", "bench_report.md", "scale-wan_scale.md",
                                                     "scale_scale.md", "suite.json", "suite.md"]


def test_stages_runs_only_the_named_stages(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny", "--device", "cpu",
                           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--stages", "scale-wan"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    suite = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["stage"] for r in suite["stages"]] == ["scale-wan"]
    assert "| sdo |" in (tmp_path / "out" / "scale-wan_scale.md").read_text()
