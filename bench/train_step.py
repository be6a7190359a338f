"""Seconds per DreamRelation optimizer step and peak memory, cached vs per-step encoding.

    python bench/train_step.py --profile tiny                       # here, CPU: the tiny models
    python bench/train_step.py --sdxl-shapes --resolution 1024 --dtype bf16 --gradient-checkpointing
                                                                    # on a GPU: SDXL-sized random weights

``--sdxl-shapes`` builds SDXL's UNet, VAE and both text encoders, CLIP ViT-bigG/14 and the
MS-Diffusion adapter at their public sizes with random weights (tests/sdxl_shapes.py; no
download), so that 1024 px time and memory can be measured anywhere with a GPU. Two steps are
timed on the same synthetic triplet (2 subjects, 17 keypoints, batch 1):

* cached (relbench): the concept images, motion image and prompt were encoded once before
  training; a step runs the UNet (with the LoRA) and the losses;
* per-step encoding (the reference code's way): the same step after encoding the motion image
  and every concept image with the VAE, the concept images with the image encoder, and the
  prompt and phrases with the text encoders, every step.

Targets (issue 3) on one H100 at 1024 px, bf16, batch 1, gradient checkpointing: peak memory
under 24 GiB, and the cached step at least 1.5x faster than the per-step-encoding step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("tiny",), default="tiny", help="tiny models (without --sdxl-shapes)")
    p.add_argument("--sdxl-shapes", action="store_true", help="SDXL-sized models with random weights")
    p.add_argument("--resolution", type=int, default=None, help="default: 64 tiny, 1024 SDXL shapes")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (after 2 warm-up steps)")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def build_models(args: argparse.Namespace, device: Any, dtype: Any) -> Any:
    from relbench.methods.ms_diffusion.adapter import MSAdapter
    from relbench.methods.ms_diffusion.config import MSAdapterConfig
    from relbench.methods.ms_diffusion.encoders import SubjectEncoder
    from relbench.tiny import SDXL_SCHEDULER_CONFIG, seeded

    if args.sdxl_shapes:
        from transformers import CLIPImageProcessor

        # A test helper, not installed: importable once tests/ is on the path.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from sdxl_shapes import bigg_image_encoder, sdxl_components

        parts = sdxl_components(str(device))
        image_encoder, processor, config = bigg_image_encoder(str(device)), CLIPImageProcessor(), MSAdapterConfig.sdxl()
    else:
        from relbench.methods.ms_diffusion.encoders import tiny_image_encoder
        from relbench.tiny import tiny_sdxl_components

        parts = tiny_sdxl_components(0)
        (image_encoder, processor), config = tiny_image_encoder(0), MSAdapterConfig.tiny()
    for name in ("unet", "text_encoder", "text_encoder_2"):
        parts[name].to(device=device, dtype=dtype).requires_grad_(False)
    parts["vae"].to(device=device).requires_grad_(False)  # built in float32; stays so (encodes once)
    with seeded(1):
        adapter = MSAdapter(config, parts["unet"]).to(device=device, dtype=dtype).requires_grad_(False)
    adapter.install(parts["unet"])
    encoder = SubjectEncoder(image_encoder.to(device=device, dtype=dtype), processor, parts["text_encoder"], parts["tokenizer"])
    return SimpleNamespace(**parts, adapter=adapter, encoder=encoder, scheduler_config=dict(SDXL_SCHEDULER_CONFIG),
                           vae_scale_factor=2 ** (len(parts["vae"].config.block_out_channels) - 1))


def synthetic_cache(models: Any, resolution: int, device: Any, dtype: Any) -> Any:
    """Encode one synthetic triplet the way build_cache does (2 subjects, 17 keypoints)."""
    import numpy as np
    import torch
    from PIL import Image

    from relbench.methods.dreamrelation.train import CachedTriplets, encode_prompts

    rng = np.random.default_rng(0)
    photo = lambda: Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8))  # noqa: E731
    pixels = lambda n: torch.rand(n, 3, resolution, resolution, device=device) * 2 - 1  # noqa: E731
    with torch.no_grad():
        motion = models.vae.encode(pixels(1)).latent_dist
        concepts = models.vae.encode(pixels(2)).latent_dist.mean * models.vae.config.scaling_factor
        image_embeds = models.encoder.encode_images([[photo(), photo()]])
        phrase_embeds = models.encoder.encode_phrases([["dog", "stuffed animal"]])
        prompt_embeds, pooled = encode_prompts(models, ["a dog is hugging a stuffed animal"], device)
    masks = torch.zeros(1, 1, 2, 1, resolution, resolution, dtype=torch.bool, device=device)  # (T, V, N, 1, H, W)
    masks[..., :, : resolution // 2] = True
    keypoints = torch.rand(1, 1, 2, 17, 2, device=device)
    predicate = torch.zeros(1, 77, dtype=torch.bool, device=device)
    predicate[0, 4] = True
    return CachedTriplets(
        motion_mean=motion.mean[None].float(), motion_std=motion.std[None].float(), masks=masks,
        boxes=torch.tensor([[[[0.0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.9]]]], device=device),
        rel_keypoints=keypoints, rel_visibility=torch.ones(1, 1, 2, 17, dtype=torch.bool, device=device),
        time_ids=torch.tensor([[[resolution, resolution, 0, 0, resolution, resolution]]], dtype=torch.float32, device=device),
        concept_latents=concepts[None, None].float(), concept_keypoints=keypoints,
        concept_visibility=torch.ones(1, 1, 2, 17, dtype=torch.bool, device=device), image_embeds=image_embeds.to(dtype),
        phrase_embeds=phrase_embeds.to(dtype), prompt_embeds=prompt_embeds.to(dtype), pooled_prompt_embeds=pooled.to(dtype),
        predicate_mask=predicate, prompts=["a dog is hugging a stuffed animal"],
    )


def main(argv: list[str] | None = None) -> None:
    import torch
    from diffusers import DDPMScheduler

    from relbench.methods.dreamrelation import train
    from relbench.methods.dreamrelation.lora import add_relation_lora
    from relbench.methods.dreamrelation.losses import DreamRelationLoss
    from relbench.methods.ms_diffusion.attention import AttentionStore

    args = parse(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    resolution = args.resolution or (1024 if args.sdxl_shapes else 64)
    models = build_models(args, device, dtype)
    trainable = add_relation_lora(models.unet, seed=0)
    for p in trainable:
        p.data = p.data.float()
    if args.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    step_args = SimpleNamespace(train_batch_size=1, scale=0.6, kml_max_timestep=333)
    alphas = DDPMScheduler.from_config(models.scheduler_config).alphas_cumprod.to(device)
    store = AttentionStore(max_queries=train.coarsest_cross_attention_queries(models.unet, resolution // models.vae_scale_factor))
    weights = DreamRelationLoss()
    cache = synthetic_cache(models, resolution, device, dtype)

    def step(reencode: bool, index: int) -> None:
        use = synthetic_cache(models, resolution, device, dtype) if reencode else cache
        generator = train.step_generator(0, index, 0, device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        with autocast:
            loss, _ = train.training_step(models, models.unet, models.adapter.image_proj, use, weights, store, generator,
                                          step_args, alphas)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(reencode: bool) -> tuple[float, float]:
        for i in range(2):
            step(reencode, i)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds = []
        for i in range(args.steps):
            began = time.perf_counter()
            step(reencode, 100 + i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        return statistics.median(seconds), peak

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    shape = "SDXL shapes, random weights" if args.sdxl_shapes else "tiny profile"
    print(f"device: {name}; {shape}; {resolution} px; dtype {args.dtype}; batch 1; gradient checkpointing {args.gradient_checkpointing}")
    cached, cached_peak = timed(False)
    per_step, per_step_peak = timed(True)
    print(f"cached encodings (relbench):    {cached:.3f} s/step, peak {cached_peak:.2f} GiB")
    print(f"per-step encoding (reference):  {per_step:.3f} s/step, peak {per_step_peak:.2f} GiB")
    print(f"speed-up: {per_step / cached:.2f}x (median of {args.steps} steps each)")


if __name__ == "__main__":
    main()
