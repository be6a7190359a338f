"""The Stable Diffusion 1.x pipeline ReVersion runs on: pretrained by hub id / local folder, or tiny.

ReVersion's authors train and sample with Stable Diffusion v1.5 (``runwayml/stable-diffusion-v1-5``
in their README; that repository was withdrawn from the hub and ``stable-diffusion-v1-5/
stable-diffusion-v1-5`` is its official re-upload with the same weights). The tiny profile builds
the same architecture at 32/64 channels from configs: a CLIP text encoder over the real CLIP
vocabulary (offline tokenizer), a 2-level UNet with cross-attention and a 2-level VAE, with SD
1.5's noise schedule and PNDM sampler so that steps and timesteps mean the same thing.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.profiles import ModelRef, pipeline_revision, torch_dtype

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

MODEL_KEY = "sd15"
# stable-diffusion-v1-5 scheduler/scheduler_config.json (the pipeline's default sampler, PNDM).
SD15_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
)
# A pretrained tokenizer smaller than this is not CLIP's (offline hub lookups can return a stub).
MIN_VOCABULARY = 49408


def tiny_sd15_components(seed: int = 0) -> dict[str, Any]:
    """SD 1.5-shaped components with seeded random weights (UNet ~0.8M params)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from relbench.tiny import clip_tokenizer, seeded, tiny_clip_text_config

    with seeded(seed):
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config()))
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        # A copy: textual inversion adds tokens to the tokenizer, and the offline one is shared.
        "tokenizer": copy.deepcopy(clip_tokenizer()),
        "scheduler": PNDMScheduler(**SD15_SCHEDULER_CONFIG),
        "safety_checker": None, "feature_extractor": None, "image_encoder": None,
    }


def load_sd15(ref: ModelRef, dtype: str = "float32", variant: str = "", tiny_seed: int = 0) -> tuple["StableDiffusionPipeline", str | None]:
    """The pipeline and the commit it was loaded from (None for tiny or plain folders).

    No safety checker: it blacks out images it flags, which would score as failed generations.
    """
    from diffusers import StableDiffusionPipeline

    if ref.is_tiny:
        pipe = StableDiffusionPipeline(**tiny_sd15_components(tiny_seed), requires_safety_checker=False)
        revision = None
        if torch_dtype(dtype) != pipe.unet.dtype:
            pipe = pipe.to(dtype=torch_dtype(dtype))
    else:
        from relbench.errors import exception_line
        from relbench.models_manifest import fix_hint, require_cached_ref

        require_cached_ref(ref.key, ref.id, ref.revision, {"variant": variant})
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                ref.id, revision=ref.revision, dtype=torch_dtype(dtype), variant=variant or None,
                use_safetensors=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        except (OSError, ValueError) as exc:
            raise RelbenchError(
                f"cannot load Stable Diffusion 1.5 from {ref.id!r} ({exception_line(exc)}); {fix_hint(ref.key, ref.id)}"
            ) from exc
        revision = pipeline_revision(pipe)
    if len(pipe.tokenizer) < MIN_VOCABULARY:
        raise RelbenchError(f"{ref.id}: tokenizer has {len(pipe.tokenizer)} tokens, expected CLIP's {MIN_VOCABULARY}; is the folder complete?")
    pipe.set_progress_bar_config(disable=True)
    return pipe, revision
