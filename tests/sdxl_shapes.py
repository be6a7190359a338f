"""SDXL-sized models with random weights, from the public configs (no download).

For tests of state-dict key names and shapes (built on the ``meta`` device: no memory) and for
``bench/`` scripts that measure 1024 px time and memory on a GPU. The values are the fields that
shape each network in the public config files of ``stabilityai/stable-diffusion-xl-base-1.0``
(``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``) and of
``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` (vision tower).

A test helper, not part of the installed package: tests import it as ``sdxl_shapes`` (pytest puts
``tests/`` on ``sys.path``, as for ``fake_hosts``); bench scripts add ``tests/`` to ``sys.path``
first (see ``bench/train_step.py``).
"""

from __future__ import annotations

from typing import Any

SDXL_UNET_CONFIG: dict[str, Any] = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], in_channels=4, out_channels=4,
    layers_per_block=2, norm_num_groups=32, norm_eps=1e-5, projection_class_embeddings_input_dim=2816,
    sample_size=128, transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
)
SDXL_VAE_CONFIG: dict[str, Any] = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
# CLIP ViT-L/14 text tower (SDXL's first text encoder).
SDXL_TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
)
# OpenCLIP ViT-bigG/14 text tower with projection (SDXL's second text encoder).
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, projection_dim=1280, hidden_act="gelu",
)
# OpenCLIP ViT-bigG/14 vision tower (MS-Diffusion's image encoder).
BIGG_VISION_CONFIG: dict[str, Any] = dict(
    hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16, patch_size=14,
    image_size=224, projection_dim=1280, hidden_act="gelu",
)


def sdxl_unet(device: str = "meta") -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)


def sdxl_components(device: str = "meta", seed: int = 0) -> dict[str, Any]:
    """The SDXL pipeline's modules at full size with random weights, and the offline tokenizer."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from relbench.tiny import SDXL_SCHEDULER_CONFIG, clip_tokenizer, seeded

    with seeded(seed), torch.device(device):
        parts = {
            "unet": sdxl_unet(device),
            "vae": AutoencoderKL(**SDXL_VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER_CONFIG)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2_CONFIG)),
        }
    tokenizer = clip_tokenizer()
    return {**parts, "tokenizer": tokenizer, "tokenizer_2": tokenizer, "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG)}


def bigg_image_encoder(device: str = "meta", seed: int = 0) -> Any:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from relbench.tiny import seeded

    with seeded(seed), torch.device(device):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**BIGG_VISION_CONFIG))
