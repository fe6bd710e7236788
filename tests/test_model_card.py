"""The model card beside every exported fine-tuning result: its facts come from the run, and its
loading snippet runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from shortcut_diffusion.cli import main
from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune


def card_and_snippet(final: Path) -> tuple[str, str]:
    text = (final / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return text, snippet


def test_the_card_states_the_run_and_its_snippet_loads_it(tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", "--model", "toy", "--reward", "ink", "--estimator", "truncated:k=1", "--steps", "2",
                 "--max-steps", "3", "--batch", "2", "--cond", "1", "--eval-every", "0", "--eval-per-class", "2",
                 "--checkpoint-every", "0", "--lr", "0.05", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    text, snippet = card_and_snippet(out / "final")
    assert "`toy`" in text and "`ink`" in text and "`truncated:k=1`" in text and "3 optimizer steps" in text
    before, after = summary["before"]["reward"], summary["after"]["reward"]
    assert f"| reward | {before:.4g} | {after:.4g} |" in text
    scope: dict = {}
    exec(snippet, scope)
    lora = {k: v for k, v in scope["model"].network.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values()), "the snippet loaded no trained adapter"


@pytest.mark.parametrize("target", ["lora", "full"])
def test_a_pipeline_card_loads_with_diffusers(pipeline_dirs, tmp_path, target):
    config = FinetuneConfig(model=str(pipeline_dirs["sd"]), target=target, prompt=["a red cube"], reward="ink",
                            steps=2, batch=1, max_steps=1, eval_every=0, eval_per_class=1, checkpoint_every=0,
                            lr=0.05 if target == "lora" else 1e-3, height=16, width=16, device="cpu",
                            progress=False, out=str(tmp_path / "ft"))
    run_finetune(config)
    text, snippet = card_and_snippet(tmp_path / "ft" / "final")
    assert str(pipeline_dirs["sd"]) in text and "sdo:keep=random" in text and "| reward |" in text
    assert ("load_lora_weights" in snippet) == (target == "lora")
    scope: dict = {}
    exec(snippet, scope)
    unet = scope["pipe"].unet
    if target == "lora":
        assert any("lora_B" in name for name, _ in unet.named_parameters())
    else:
        from diffusers import UNet2DConditionModel

        saved = UNet2DConditionModel.from_pretrained(tmp_path / "ft" / "final" / "unet")
        name, weight = next(iter(saved.state_dict().items()))
        torch.testing.assert_close(unet.state_dict()[name], weight, rtol=0, atol=0)


def test_an_image_to_video_card_loads_the_base_with_its_conditioning_image(tmp_path):
    from shortcut_diffusion.tasks.finetune.card import _loading

    snippet = "\n".join(_loading(object(), "embedding", "some/i2v-model", tmp_path, image="cat.png"))
    assert f"load_finetuned(load_model('some/i2v-model', image='cat.png'), {str(tmp_path)!r})" in snippet
    assert "image=" not in "\n".join(_loading(object(), "embedding", "some/t2v-model", tmp_path))
