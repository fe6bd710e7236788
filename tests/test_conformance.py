"""Every command on every model family in every dtype the CPU runs, through the one model interface.

Commands: ``latent``; ``finetune`` with the ``lora``, ``embedding`` and ``full`` targets;
``gradcheck``; ``bench --quick``. Families: the digits testbed, the toy UNet, and tiny random
SD (epsilon and v), SDXL, SD3, Flux and pixel DDPM pipelines. Dtypes: fp32, bf16 and fp16 (fp16 with
loss scaling). Each run must end with finite numbers and reach the trained tensors; gradcheck's
``truncated:k=all`` (every step kept) must reproduce ``full``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shortcut_diffusion import UsageError
from shortcut_diffusion.measure.bench import BenchConfig, run_bench
from shortcut_diffusion.cli import main
from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune
from shortcut_diffusion.measure.gradcheck.run import GradcheckConfig, run_gradcheck
from shortcut_diffusion.tasks.latent.run import LatentConfig, run_latent

FAMILIES = ["digits", "toy", "sd", "sd-v", "sdxl", "sd3", "flux", "ddpm"]
DTYPES = ["fp32", "bf16", "fp16"]


def model_options(family: str, pipeline_dirs) -> dict:
    if family in ("digits", "toy"):
        return {"model": family}
    if family == "ddpm":
        return {"model": str(pipeline_dirs["ddpm"])}
    return {"model": str(pipeline_dirs[family]), "prompt": ["a red cube", "a blue ball"], "height": 16, "width": 16}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_latent(family, dtype, pipeline_dirs, tmp_path):
    config = LatentConfig(**model_options(family, pipeline_dirs), dtype=dtype, reward="ink", steps=3, iters=2, batch=2,
                          device="cpu", progress=False, grid_every=0, out=str(tmp_path / "run"))
    result, out = run_latent(config)
    assert result.stopped is None
    assert all(row["grad_norm"] > 0 and torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
    final = load_file(out / "final.safetensors")
    assert final["latents"].dtype == torch.float32 and torch.isfinite(final["latents"]).all()
    assert final["images"].dtype == torch.float32 and final["images"].abs().max() <= 1
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", ["lora", "embedding", "full"])
def test_finetune(target, family, dtype, pipeline_dirs, tmp_path):
    options = model_options(family, pipeline_dirs)
    if family in ("digits", "toy"):
        options["cond"] = ["1", "2"]
    config = FinetuneConfig(**options, dtype=dtype, target=target, reward="ink", steps=3, batch=2, max_steps=2,
                            eval_every=0, eval_per_class=1, checkpoint_every=0, lr=0.05 if target != "full" else 1e-3,
                            device="cpu", progress=False, out=str(tmp_path / "run"))
    if target == "embedding" and family == "ddpm":
        with pytest.raises(UsageError, match="needs a model with conditioning embeddings"):
            run_finetune(config)
        return
    summary = run_finetune(config)
    out = Path(config.out)
    assert summary["steps"] == 2 and summary["dtype"] == dtype
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < row["grad_norm"] < float("inf") for row in rows), "the reward must reach the trained tensors"
    assert torch.isfinite(torch.tensor(summary["after"]["reward"]))
    exported = [p for p in (out / "final").rglob("*.safetensors")]
    assert exported
    for path in exported:  # float32 master copies are what is exported, finite
        for tensor in load_file(path).values():
            assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all(), path


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck(family, dtype, pipeline_dirs):
    options = model_options(family, pipeline_dirs)
    report = run_gradcheck(GradcheckConfig(**options, dtype=dtype, steps=3, device="cpu",
                                           estimators=["truncated:k=all", "sdo", "refl"]))
    results = {r["estimator"]: r for r in report["results"]}
    assert list(results) == ["full", "truncated:k=all", "sdo", "refl"]
    assert results["truncated:k=all"]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert results["sdo"]["nfe_backward"] == 1 and 0 < results["sdo"]["rel_norm"] < float("inf")
    # one network call per step: a guided model batches [uncond, cond] into that call
    assert results["full"]["nfe_forward"] == 3 and results["full"]["nfe_backward"] == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_bench_quick(family, dtype, pipeline_dirs, tmp_path):
    options = model_options(family, pipeline_dirs)
    rows = run_bench(BenchConfig(**options, dtype=dtype, quick=True, estimators=["sdo", "full"], device="cpu",
                                 out=str(tmp_path / "bench")), log=None)
    by = {(r["estimator"], r["steps"]): r for r in rows}
    assert set(by) == {(e, n) for e in ("sampling", "sdo", "full") for n in (2, 4)}
    assert all(r["dtype"] == dtype for r in rows)
    assert by[("sdo", 4)]["saved_bytes"] < by[("full", 4)]["saved_bytes"]
    report = (tmp_path / "bench" / "report.md").read_text()
    assert f"guidance {rows[0]['guidance']}" in report and dtype in report


def test_gradcheck_on_a_pipeline_from_the_command_line(pipeline_dirs, capsys):
    """The issue's command: every estimator's row, with the guidance it measured."""
    assert main(["gradcheck", "--model", str(pipeline_dirs["sd"]), "--prompt", "a photo", "--steps", "4", "--json",
                 "--height", "16", "--width", "16", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    from shortcut_diffusion.measure.gradcheck.run import DEFAULT_ESTIMATORS

    assert [r["estimator"] for r in report["results"]] == DEFAULT_ESTIMATORS
    assert report["guidance"] == 7.5 and report["family"] == "sd"
    assert all(r["nfe_forward"] >= 4 for r in report["results"])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_lora_from_the_command_line(dtype, pipeline_dirs, tmp_path, capsys):
    """The command that gave NaN at step 1 in fp16: a finite, improved evaluation reward and
    finite float32 LoRA weights."""
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(pipeline_dirs["sd"]), "--target", "lora", "--reward", "ink", "--dtype", dtype,
                 "--prompt", "a cat", "--steps", "3", "--max-steps", "2", "--batch", "1", "--height", "16", "--width",
                 "16", "--eval-every", "2", "--eval-per-class", "1", "--checkpoint-every", "0", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "max_steps" and summary["after"]["reward"] > summary["before"]["reward"]
    weights = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("target", ["latent", "lora", "embedding"])
def test_half_precision_improves_the_reward(target, family, dtype, pipeline_dirs, tmp_path):
    options = model_options(family, pipeline_dirs)
    common = dict(**options, dtype=dtype, reward="ink", steps=3, device="cpu", progress=False, out=str(tmp_path / "r"))
    if target == "latent":
        result, _ = run_latent(LatentConfig(**common, iters=4, batch=2, lr=0.1, grid_every=0))
        assert result.rewards.mean() > result.start_rewards.mean()
        return
    summary = run_finetune(FinetuneConfig(**common, target=target, batch=2, max_steps=3, eval_every=0,
                                          eval_per_class=1, checkpoint_every=0, lr=0.05))
    assert summary["after"]["reward"] > summary["before"]["reward"]
