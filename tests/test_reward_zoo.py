"""The reward zoo on tiny randomly initialised models of the real architectures (no downloads)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_diffusion import UsageError
from shortcut_diffusion.rewards import get_reward
from shortcut_diffusion.rewards.clip import ClipPreprocess

import tiny_pipelines

PROMPTS = ["a red cube", "a blue ball"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=520, bos_token_id=518, eos_token_id=519, pad_token_id=1, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(directory)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tiny_pipelines.clip_tokenizer(directory / "tok"))
    processor.save_pretrained(directory)
    return directory


def images(n=2, size=40, seed=0):
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def check_reward(reward, x, prompts=PROMPTS):
    x = x.clone().requires_grad_(True)
    value = reward(x, prompts)
    assert value.shape == (len(x),) and torch.isfinite(value).all()
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    return value


def test_clip_preprocessing_matches_the_image_processor(tiny_clip):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    ours = ClipPreprocess.from_processor(processor)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    reference = processor(images=list(pixels.numpy()), return_tensors="pt")["pixel_values"]
    ours_out = ours(pixels.permute(0, 3, 1, 2).float() / 127.5 - 1)
    torch.testing.assert_close(ours_out, reference, rtol=0, atol=1e-5)  # no resize: exact
    # A larger, non-square image is resized (bicubic) and centre-cropped as the processor does.
    big = torch.from_numpy(np.kron(pixels[0].numpy(), np.ones((2, 3, 1), dtype=np.uint8)))  # 64 x 96, smooth blocks
    reference = processor(images=[big.numpy()], return_tensors="pt")["pixel_values"]
    ours_out = ours(big.permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert ours_out.shape == reference.shape == (1, 3, 32, 32)
    assert (ours_out - reference).abs().mean() < 0.05


def test_clip_score(tiny_clip):
    reward = get_reward(f"clip:{tiny_clip}")
    value = check_reward(reward, images())
    assert value.abs().max() <= 1.0001  # a cosine
    with pytest.raises(UsageError, match="needs the prompt"):
        reward(images(), None)


def test_pickscore(tiny_clip):
    reward = get_reward(f"pickscore:model={tiny_clip},processor={tiny_clip}")
    clip = get_reward(f"clip:{tiny_clip}")
    x = images()
    scale = reward.model.logit_scale.exp()
    torch.testing.assert_close(check_reward(reward, x), scale * clip(x, PROMPTS))


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_aesthetic_heads(tiny_clip, tmp_path, head):
    torch.manual_seed(0)
    if head == "linear":
        state = {"weight": torch.randn(1, 16), "bias": torch.randn(1)}
    else:
        dims = [16, 1024, 128, 64, 16, 1]
        state = {}
        for index, (a, b) in zip((0, 2, 4, 6, 7), zip(dims, dims[1:])):
            state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = torch.randn(b, a) * 0.1, torch.randn(b)
    path = tmp_path / "head.pth"
    torch.save(state, path)
    reward = get_reward(f"aesthetic:head={path},clip={tiny_clip}")
    x = images()
    value = check_reward(reward, x)
    embeds = reward.image_embeds(x)
    if head == "linear":
        torch.testing.assert_close(value, embeds @ state["weight"][0] + state["bias"][0])


def test_clip_style_is_zero_at_the_reference(tiny_clip, tmp_path):
    from PIL import Image

    ref = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    reward = get_reward(f"clip-style:{tmp_path / 'ref.png'},model={tiny_clip},layers=1+2")
    same = torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert float(reward(same)) == pytest.approx(0.0, abs=1e-6)
    assert (check_reward(reward, images(size=32)) < 0).all()


def test_compressibility_ranks_images_like_jpeg():
    from PIL import Image

    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 1, 32)[None, :, None] * np.ones((32, 32, 3))
    levels = [smooth + s * rng.standard_normal((32, 32, 3)) for s in (0.0, 0.05, 0.15, 0.4)]
    levels = [np.clip(x, 0, 1) for x in levels]
    sizes = []
    for x in levels:
        buffer = io.BytesIO()
        Image.fromarray((x * 255).round().astype(np.uint8)).save(buffer, format="JPEG", quality=75)
        sizes.append(buffer.tell())
    reward = get_reward("compressibility:quality=75")
    batch = torch.from_numpy(np.stack(levels)).permute(0, 3, 1, 2).float() * 2 - 1
    value = check_reward(reward, batch)
    assert np.argsort(sizes).tolist() == np.argsort(-value.detach().numpy()).tolist()


class TinyNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def tiny_classifier():
    from shortcut_diffusion.rewards.classifier import CLASSIFIERS, register_classifier

    register_classifier("tiny-net", TinyNet)
    yield "tiny-net"
    CLASSIFIERS.pop("tiny-net")


def test_classifier_reward_targeted_and_adversarial(tiny_classifier):
    targeted = get_reward("classifier:tiny-net,classes=5,target=3,size=16")
    x = images(size=24)
    value = check_reward(targeted, x)
    logp = torch.log_softmax(targeted.model(targeted.preprocess(x)), -1)
    torch.testing.assert_close(value, logp[:, 3])
    adversarial = get_reward("classifier:tiny-net,classes=5,avoid=3,size=16")
    torch.testing.assert_close(adversarial(x), -value.detach())
    with pytest.raises(UsageError, match="exactly one of target"):
        get_reward("classifier:tiny-net,size=16")
    with pytest.raises(UsageError, match="unknown classifier 'no-such-net'; name one: torchvision/MODEL, timm/MODEL, tiny-net"):
        get_reward("classifier:no-such-net,target=1")


def test_weighted_sum_and_running_normalisation():
    x = images()
    ink, comp = get_reward("ink"), get_reward("compressibility")
    total = get_reward("ink=1,compressibility=0.5")
    torch.testing.assert_close(total(x), ink(x) + 0.5 * comp(x))
    normalized = get_reward("ink=1,compressibility=0.5,normalize=running")
    value = check_reward(normalized, x)
    assert value.abs().max() < 10  # each term divided by its own spread
    # ';' separates terms whose own options hold commas
    semi = get_reward("ink=1;compressibility:quality=50=0.5")
    torch.testing.assert_close(semi(x), ink(x) + 0.5 * get_reward("compressibility:quality=50")(x))


def test_augmented_views_are_differentiable_and_seeded():
    x = images(4, size=32)
    a = get_reward("ink", augment=["crop", "cutout", "translation", "color"], views=3, seed=1)
    b = get_reward("ink", augment=["crop", "cutout", "translation", "color"], views=3, seed=1)
    value = check_reward(a, x, None)
    torch.testing.assert_close(value.detach(), b(x))
    assert not torch.allclose(value.detach(), get_reward("ink")(x))
    with pytest.raises(UsageError, match="unknown augmentation"):
        get_reward("ink", augment=["mixup"])


def test_rewards_with_weights_go_to_the_device_of_the_model_they_score(tiny_clip, tiny_classifier):
    """Built for a model on another device (here "meta", standing in for a GPU), the reward's own
    network follows it; rewards without weights are left alone."""
    from types import SimpleNamespace

    model = SimpleNamespace(device=torch.device("meta"), classifier=None)
    assert get_reward(f"clip:{tiny_clip}", model=model).device.type == "meta"
    classifier = get_reward("classifier:tiny-net,classes=5,target=1,size=16", model=model)
    assert next(classifier.model.parameters()).device.type == "meta"
    assert get_reward("ink", model=model)(images()).device.type == "cpu"


def test_reward_from_a_user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text("def brightness(images, prompts=None):\n    return images.mean(dim=(1, 2, 3))\n")
    reward = get_reward(f"{path}:brightness")
    x = images()
    torch.testing.assert_close(reward(x), x.mean(dim=(1, 2, 3)))
    with pytest.raises(UsageError, match="defines no 'nope'"):
        get_reward(f"{path}:nope")


def test_image_range_is_checked(tiny_clip):
    with pytest.raises(UsageError, match=r"\[-1, 1\]"):
        get_reward("compressibility")(images() * 3)


def test_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="could not load the CLIP model"):
        get_reward(f"clip:{tmp_path / 'nothing'}")
    with pytest.raises(UsageError, match="aesthetic head weights not found"):
        get_reward(f"aesthetic:head={tmp_path / 'missing.pth'}")


def test_text_rewards_by_name_from_sdo_latent_and_finetune(pipeline_dirs, tiny_clip, tmp_path):
    import json

    from shortcut_diffusion.cli import main

    spec = f"clip:{tiny_clip}=1,compressibility=0.01"
    common = ["--model", str(pipeline_dirs["sd"]), "--reward", spec, "--reward-augment", "crop", "--reward-views", "2",
              "--steps", "3", "--batch", "2", "--height", "16", "--width", "16", "--device", "cpu", "--no-progress"]
    assert main(["latent", *common, "--prompt", "a red cube", "--iters", "2", "--out", str(tmp_path / "latent")]) == 0
    assert json.loads((tmp_path / "latent" / "summary.json").read_text())["prompts"] == ["a red cube"] * 2
    assert main(["finetune", *common, "--prompt", "a red cube", "a blue ball", "--max-steps", "2", "--eval-every", "0",
                 "--eval-per-class", "1", "--checkpoint-every", "0", "--out", str(tmp_path / "ft")]) == 0
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["before"]["reward"] != summary["after"]["reward"]
