"""Adapters: diffusers UNets as denoisers, classifier-free guidance as in the pipelines."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from shortcut_diffusion import UsageError, get_estimator, make_scheduler, sample
from shortcut_diffusion.models import ClassifierFreeGuidance, UNet2DConditionDenoiser, UNet2DDenoiser


@pytest.fixture(scope="module")
def cond_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=12,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
    ).eval().requires_grad_(False)


def test_cfg_matches_the_pipeline_formula(cond_unet):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(2, 5, 12, generator=gen)
    empty = torch.randn(1, 5, 12, generator=gen)
    t = torch.tensor(500)
    guided = ClassifierFreeGuidance(UNet2DConditionDenoiser(cond_unet), empty, scale=6.0)
    with torch.no_grad():
        e_c = cond_unet(x, t, encoder_hidden_states=text).sample
        e_u = cond_unet(x, t, encoder_hidden_states=empty.expand(2, -1, -1)).sample
        torch.testing.assert_close(guided(x, t, text), e_u + 6.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)
        one = ClassifierFreeGuidance(UNet2DConditionDenoiser(cond_unet), empty, scale=1.0)
        torch.testing.assert_close(one(x, t, text), e_c)
        # rescale=1 matches the conditional output's per-sample std
        rescaled = ClassifierFreeGuidance(UNet2DConditionDenoiser(cond_unet), empty, scale=6.0, rescale=1.0)(x, t, text)
        torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), e_c.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["full", "sdo:keep=random", "truncated:k=1"])
def test_prompt_embedding_gradients_with_cfg(spec, cond_unet):
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, 12, generator=gen).requires_grad_()
    denoiser = ClassifierFreeGuidance(UNet2DConditionDenoiser(cond_unet), torch.zeros(1, 5, 12), scale=4.0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    out = sample(denoiser, make_scheduler("dpmpp-2m"), x, steps=3, estimator=get_estimator(spec), cond=text)
    out.sample.mean().backward()
    assert text.grad is not None and torch.isfinite(text.grad).all() and text.grad.abs().sum() > 0


def test_dict_conditioning_is_batched_per_key(cond_unet):
    gen = torch.Generator().manual_seed(2)
    text = torch.randn(2, 5, 12, generator=gen)
    empty = torch.randn(1, 5, 12, generator=gen)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor(300)
    as_tensor = ClassifierFreeGuidance(UNet2DConditionDenoiser(cond_unet), empty, scale=3.0)
    as_dict = ClassifierFreeGuidance(UNet2DConditionDenoiser(cond_unet), {"encoder_hidden_states": empty}, scale=3.0)
    with torch.no_grad():
        torch.testing.assert_close(as_dict(x, t, {"encoder_hidden_states": text}), as_tensor(x, t, text))


def test_unet2d_with_integer_class_labels():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=3,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = sample(UNet2DDenoiser(unet), make_scheduler("ddpm"), x, steps=3, estimator=get_estimator("sdo"),
                 cond=torch.tensor([0, 2]), generator=0)
    out.sample.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_sd15_shaped_model_has_the_real_configuration():
    from diffusers import UNet2DConditionModel

    from shortcut_diffusion.models.sd15 import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 860  # Stable Diffusion 1.5's UNet


def test_sd15_shaped_resolution_errors():
    from shortcut_diffusion import load_model

    with pytest.raises(UsageError, match="multiple of 64"):
        load_model("sd15-random:100")
    with pytest.raises(UsageError, match="integer resolution"):
        load_model("sd15-random:big")
