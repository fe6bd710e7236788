"""Data-parallel fine-tuning under ``accelerate launch`` (2 CPU processes, gloo), and the LoRA file
format read by diffusers' own loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune
from shortcut_diffusion.tasks.finetune import checkpoint as ckpt


def test_two_processes_match_one_process_with_the_summed_batch(tiny_testbed_dir, tmp_path):
    per_rank = 2
    common = ["--model", str(tiny_testbed_dir), "--cond", "1", "7", "--steps", "4", "--max-steps", "3",
              "--eval-every", "0", "--eval-per-class", "1", "--checkpoint-every", "3", "--reward", "ink",
              "--lr", "0.05", "--no-progress"]
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "shortcut_diffusion", "finetune", *common, "--batch", str(per_rank), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["global_batch"] == 2 * per_rank
    digests = summary["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "the ranks ended with different weights"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [2 * per_rank] * 3, "every step must count the samples of both ranks"

    # One process with the summed batch sees the same samples: the same training, to float tolerance.
    single = tmp_path / "single"
    config = FinetuneConfig(model=str(tiny_testbed_dir), cond=["1", "7"], steps=4, max_steps=3, eval_every=0,
                            eval_per_class=1, checkpoint_every=3, reward="ink", lr=0.05, progress=False,
                            batch=2 * per_rank, device="cpu", out=str(single))
    run_finetune(config)
    a = load_file(ckpt.latest_checkpoint(out) / "trainable.safetensors")
    b = load_file(ckpt.latest_checkpoint(single) / "trainable.safetensors")
    # Adam divides by the gradient's running RMS, which magnifies float-order differences of tiny
    # gradient entries: compare at 1/100 of one step's size, against updates of a whole step.
    lr = 0.05
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=lr / 100, msg=k)
    lora_b = [k for k in a if "lora_B" in k]  # zero at initialisation
    assert max(a[k].abs().max().item() for k in lora_b) > lr


def test_lora_file_loads_with_diffusers_own_loader(tmp_path):
    from diffusers import UNet2DConditionModel

    from shortcut_diffusion.tasks.finetune.lora import WEIGHT_NAME, add_lora, save_lora

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    params = add_lora(unet, rank=2, targets=["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.3)
    save_lora(unet, tmp_path)
    fresh = UNet2DConditionModel(**unet.config)
    fresh.load_state_dict(base_state)
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8)
    untuned = fresh(x, 10, text).sample
    fresh.load_lora_adapter(str(tmp_path), prefix="unet", weight_name=WEIGHT_NAME)
    tuned = unet(x, 10, text).sample
    assert (tuned - untuned).abs().max() > 1e-3
    torch.testing.assert_close(fresh(x, 10, text).sample, tuned)


def test_single_process_summary_reports_one_rank(tiny_testbed_dir, tmp_path):
    config = FinetuneConfig(model=str(tiny_testbed_dir), cond=["3"], steps=3, max_steps=1, eval_every=0,
                            eval_per_class=1, checkpoint_every=0, progress=False, device="cpu", out=str(tmp_path / "r"))
    summary = run_finetune(replace(config))
    assert summary["processes"] == 1 and len(summary["rank_weight_digests"]) == 1
    assert ckpt.latest_checkpoint(Path(config.out)) is None, "--checkpoint-every 0 writes no checkpoint"


def test_fsdp_full_fine_tuning_matches_one_process_with_the_summed_batch(tiny_testbed_dir, tmp_path):
    """``--target full --fsdp`` under 2 processes (gloo): the network sharded, the exported weights
    those of one unsharded process with the summed batch."""
    from safetensors.torch import load_file

    common = ["--model", str(tiny_testbed_dir), "--cond", "1", "7", "--steps", "4", "--max-steps", "3",
              "--eval-every", "0", "--eval-per-class", "1", "--checkpoint-every", "0", "--reward", "ink",
              "--lr", "0.05", "--target", "full", "--no-progress"]
    out = tmp_path / "fsdp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "shortcut_diffusion", "finetune", *common, "--fsdp", "--batch", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fsdp"] is True and summary["processes"] == 2 and summary["global_batch"] == 4
    assert summary["rank_weight_digests"][0] == summary["rank_weight_digests"][1]

    single = tmp_path / "single"
    run_finetune(FinetuneConfig(model=str(tiny_testbed_dir), cond=["1", "7"], steps=4, max_steps=3, eval_every=0,
                                eval_per_class=1, checkpoint_every=0, reward="ink", lr=0.05, target="full",
                                progress=False, batch=4, device="cpu", out=str(single)))
    steps = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, single)]
    for sharded_row, plain_row in zip(*steps):  # the same training, step by step
        for key in ("reward", "grad_norm"):
            assert sharded_row[key] == pytest.approx(plain_row[key], rel=1e-3, abs=1e-6), key
    name = "unet/diffusion_pytorch_model.safetensors"
    sharded, plain = load_file(out / "final" / name), load_file(single / "final" / name)
    base = load_file(Path(tiny_testbed_dir) / name)
    assert set(sharded) == set(plain) == set(base)
    a, b, c = (torch.cat([w[k].flatten() for k in sorted(plain)]) for w in (sharded, plain, base))
    # Adam's first steps move an entry by about lr whatever its gradient's size, so the entries
    # whose gradient is at float-rounding level move either way, in one process as in two (data
    # parallel shows the same 1% here): compare the movement as a whole, and most entries exactly.
    assert (b - c).norm() > 0.1
    assert float((a - b).norm() / (b - c).norm()) < 0.05
    assert float(((a - b).abs() < 0.05 / 100).float().mean()) > 0.95


def test_fsdp_refuses_what_it_is_not_combined_with(tmp_path):
    from shortcut_diffusion.errors import UsageError

    with pytest.raises(UsageError, match="--target lora"):
        FinetuneConfig(fsdp=True, checkpoint_every=0).check()
    with pytest.raises(UsageError, match="--dtype fp16 .use bf16.*--checkpoint-every"):
        FinetuneConfig(fsdp=True, target="full", dtype="fp16").check()
    with pytest.raises(UsageError, match="several processes"):
        run_finetune(FinetuneConfig(fsdp=True, target="full", checkpoint_every=0, device="cpu", max_steps=1,
                                    model="toy", reward="ink", progress=False, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # nothing left behind
