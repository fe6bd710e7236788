"""Stable Diffusion 1.5's network and scheduler configurations, for an SD 1.5-shaped model with random
weights that measures cost at real scale.

The UNet is ``UNet2DConditionModel`` with Stable Diffusion 1.5's configuration (860M parameters,
4-channel latents, 768-dimensional text conditioning of 77 tokens) and its scheduler settings;
the weights are random because time and memory do not depend on their values. Conditions are
class indices mapped to fixed random "prompt embeddings" (77 x 768), guided with classifier-free
guidance at 7.5 (two network evaluations per step, as Stable Diffusion is run), and ``decode`` is
the identity (rewards see the latents), so the benchmark measures the sampling graph only.

``load_model("sd15-random:256")`` (the same as ``random:sd15:256``) builds it for 256 x 256 images
(32 x 32 latents); the default is 512 x 512. The model and the other families: :mod:`.shaped`.
"""

from __future__ import annotations

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)

