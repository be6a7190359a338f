"""Train a DreamBooth LoRA on SDXL for one to three subjects: ``relbench train dreambooth-lora``.

The recipe of diffusers' ``examples/dreambooth/train_dreambooth_lora_sdxl.py`` as its
``README_sdxl.md`` runs it: a LoRA of rank 4 (alpha = rank, gaussian init) on every attention
projection of the UNet (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), text encoders frozen,
AdamW at a constant 1e-4 (weight decay 1e-4), batch 1 with 4 accumulation steps, 1024 px, 500
steps for one subject, seed 0, fp16 mixed precision, no prior preservation. Each subject has its
own rare token and instance prompt ("a photo of sks dog"); two or three subjects train jointly
(their images mixed in each epoch) for 500 steps each. Images are resized (shortest side,
Lanczos) and cropped once, at a random place unless ``--center-crop``, and SDXL's micro-conditioning
gets each image's original size and crop, as the script does.

Speed: prompts are encoded once (the text encoders are frozen, as the script does) and every
image goes through the VAE once (the latent distribution is cached and sampled each step, the
script's ``--cache_latents``); the VAE runs in float32 (SDXL's VAE overflows in float16; the
README swaps in ``madebyollin/sdxl-vae-fp16-fix`` for the same reason). Which images each
micro-step draws is a tensor made once on the device (``draw_schedule``): a step copies nothing
from the host. ``--train-batch-size 4 --gradient-accumulation-steps 1`` draws the images of the
default 1 x 4 per optimizer step in one UNet pass, where memory allows.

Output: ``pytorch_lora_weights.safetensors`` in diffusers' format (``unet.``-prefixed
``lora.down``/``lora.up`` keys, what ``StableDiffusionXLPipeline.save_lora_weights`` writes and
``load_lora_weights`` reads), ``tokens.json`` (token and class noun per concept) and
``training_config.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relbench.atomic import atomic_path, atomic_write_text
from relbench.errors import RelbenchError
from relbench.methods.dreamrelation.lora import read_lora_file as read_lora  # the one reader of diffusers' SDXL LoRA files
from relbench.methods.finetune_common import (
    RARE_TOKENS, SubjectTrainingDefaults, add_common_arguments, check_prompt_templates, check_single_tokens, class_folder,
    draw_schedule, encode_sdxl_prompts, ensure_class_images, load_rgb, model_ref, place, resize_and_crop, split_list,
    time_ids, to_pixels, tokenize, training_sdxl, validate_common_arguments, write_training_config,
)
from relbench.training import ArgumentParser, TrainingJob, make_accelerator, run_cli, run_training, weight_dtype_name

DEFAULTS = SubjectTrainingDefaults(
    steps_per_subject=500, learning_rate=1e-4, train_batch_size=1, gradient_accumulation_steps=4,
    adam_weight_decay=1e-4, checkpointing_steps=500, num_class_images=100,
)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
TOKENS_FILE = "tokens.json"
TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
INSTANCE_TEMPLATE = "a photo of {token} {class_noun}"  # README_sdxl: "a photo of sks dog"
CLASS_TEMPLATE = "a photo of {class_noun}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="relbench train dreambooth-lora",
        description="Train an SDXL DreamBooth LoRA on one to three subjects (diffusers' train_dreambooth_lora_sdxl.py recipe).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(p, DEFAULTS)
    lora = p.add_argument_group("LoRA and prompts")
    lora.add_argument("--rank", type=int, default=4, help="LoRA rank (alpha = rank)")
    lora.add_argument("--tokens", default=",".join(RARE_TOKENS), help="rare token of each concept, in --concept order")
    lora.add_argument("--instance-prompt-template", default=INSTANCE_TEMPLATE)
    lora.add_argument("--class-prompt-template", default=CLASS_TEMPLATE, help="prompt of class images (prior preservation)")
    lora.add_argument("--random-flip", action="store_true", help="mirror each image with probability 0.5 (once, as the script)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check every argument; a mistake is a RelbenchError before any model loads."""
    args = build_parser().parse_args(argv)
    validate_common_arguments(args, DEFAULTS)
    if args.rank < 1:
        raise RelbenchError(f"--rank: expected a positive integer, got {args.rank}")
    tokens = split_list(args.tokens, "--tokens")
    if len(tokens) < len(args.concepts):
        raise RelbenchError(f"--tokens: {len(args.concepts)} concepts need {len(args.concepts)} tokens, got {len(tokens)} ({args.tokens})")
    args.tokens = list(tokens[: len(args.concepts)])
    from relbench.tiny import clip_tokenizer

    # SDXL's two tokenizers share CLIP's BPE vocabulary: checked here offline, again after loading.
    check_single_tokens([clip_tokenizer()], args.tokens, "--tokens")
    check_prompt_templates(args)
    return args


# --------------------------------------------------------------------------------------------
# What the frozen encoders produce, computed once


@dataclass
class EncodedSet:
    """Images as cached VAE latent distributions, with their prompt's embeddings and time ids."""

    latent_mean: Any  # (N, 4, h, w), unscaled
    latent_std: Any  # (N, 4, h, w)
    prompt: Any  # (N,) index into prompt_embeds
    time_ids: Any  # (N, 6)
    prompt_embeds: Any  # (P, 77, C)
    pooled: Any  # (P, C2)

    @property
    def size(self) -> int:
        return int(self.latent_mean.shape[0])


def encode_set(parts: dict[str, Any], items: list[tuple[Path, int]], prompts: list[str], args: argparse.Namespace,
               seed: int, device: Any, dtype: Any) -> EncodedSet:
    """``items``: (image file, prompt index). Crops (and flips) are drawn once per image from ``seed``."""
    import torch
    from PIL import ImageOps

    rng = random.Random(seed)
    vae = parts["vae"]
    means, stds, stamps = [], [], []
    for path, _ in items:
        image = load_rgb(path)
        crop, original, top_left = resize_and_crop(image, args.resolution, args.center_crop, rng)
        if getattr(args, "random_flip", False) and rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        with torch.no_grad():
            dist = vae.encode(to_pixels(crop)[None].to(device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
        stamps.append(time_ids(original, top_left, (args.resolution, args.resolution)))
    with torch.no_grad():
        ids = [tokenize(parts["tokenizer"], prompts), tokenize(parts["tokenizer_2"], prompts)]
        embeds, pooled = encode_sdxl_prompts([parts["text_encoder"], parts["text_encoder_2"]], ids)
    return EncodedSet(
        latent_mean=torch.cat(means).to(device), latent_std=torch.cat(stds).to(device),
        prompt=torch.tensor([p for _, p in items], device=device),
        time_ids=torch.tensor(stamps, device=device, dtype=dtype),
        prompt_embeds=embeds.to(device, dtype), pooled=pooled.to(device, dtype),
    )


# --------------------------------------------------------------------------------------------
# The LoRA


def add_lora(unet: Any, rank: int, seed: int) -> list[Any]:
    """Attach the trainable LoRA (seeded gaussian init, as peft's ``init_lora_weights="gaussian"``)."""
    import torch
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGET_MODULES))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for param in params:
        param.requires_grad_(True)
        param.data = param.data.float()  # trained weights stay float32 under mixed precision
    return params


def lora_layers(unet: Any) -> dict[str, Any]:
    """The UNet's LoRA in diffusers' layout (what ``save_lora_weights`` takes as ``unet_lora_layers``)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()}


def save_lora(unet: Any, folder: Path) -> Path:
    """``<folder>/pytorch_lora_weights.safetensors`` through diffusers' own writer, replaced atomically."""
    from diffusers import StableDiffusionXLPipeline

    with atomic_path(folder / LORA_WEIGHT_NAME) as tmp:
        StableDiffusionXLPipeline.save_lora_weights(save_directory=tmp.parent, unet_lora_layers=lora_layers(unet), weight_name=tmp.name,
                                                    safe_serialization=True)
    return folder / LORA_WEIGHT_NAME


def set_lora(unet: Any, path: Path) -> None:
    """Load saved LoRA values into the UNet's (already attached) adapter, as the script's load hook."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    state = {k[len("unet."):]: v for k, v in read_lora(path).items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RelbenchError(f"{path}: LoRA keys this UNet lacks, e.g. {unexpected[0]}")


# --------------------------------------------------------------------------------------------
# Training


def main(argv: list[str] | None = None, sdxl: "tuple[dict[str, Any], str | None] | None" = None) -> Path:
    """Train; returns the path of the saved ``pytorch_lora_weights.safetensors``.

    ``sdxl``: (parts, revision) of an SDXL already in memory to train on instead of loading one
    (``finetune_common.lend_parts``, the method's own); its UNet loses the LoRA layers when done."""
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    try:
        return run_training(accelerator, args, training_job(args, accelerator, sdxl),
                            desc=f"dreambooth-lora {'+'.join(c.class_noun for c in args.concepts)}")
    finally:
        if sdxl is not None:
            remove_lora(sdxl[0]["unet"])


def remove_lora(unet: Any) -> None:
    """The UNet without any peft LoRA layer (its original linear layers back in place)."""
    if getattr(unet, "peft_config", None):
        unet.unload_lora()


def training_job(args: argparse.Namespace, accelerator: Any, sdxl: "tuple[dict[str, Any], str | None] | None" = None) -> TrainingJob:
    """The UNet LoRA on the concepts' cached latents (and class images' with prior preservation)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from relbench.profiles import torch_dtype

    device = accelerator.device
    ref = model_ref(args)
    parts, revision = training_sdxl(args, accelerator, sdxl)
    check_single_tokens([parts["tokenizer"], parts["tokenizer_2"]], args.tokens, "--tokens")
    dtype = torch_dtype(weight_dtype_name(accelerator))
    place(parts, device)

    instance_prompts = [args.instance_prompt_template.format(token=t, class_noun=c.class_noun) for t, c in zip(args.tokens, args.concepts)]
    items = [(path, index) for index, concept in enumerate(args.concepts) for path in concept.images]
    instances = encode_set(parts, items, instance_prompts, args, args.seed, device, dtype)
    classes = None
    if args.with_prior_preservation:
        class_prompts = [args.class_prompt_template.format(class_noun=c.class_noun) for c in args.concepts]
        class_items = []
        for index, concept in enumerate(args.concepts):
            with accelerator.main_process_first():
                paths = ensure_class_images(parts, class_folder(args.class_data_dir, concept.class_noun), class_prompts[index],
                                            args.num_class_images, args.class_image_steps, args.resolution, args.seed, device)
            class_items += [(path, index) for path in paths]
        classes = encode_set(parts, class_items, class_prompts, args, args.seed + 1, device, dtype)

    unet = parts["unet"]
    params = add_lora(unet, args.rank, args.seed)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    scaling = float(parts["vae"].config.scaling_factor)
    batch = args.train_batch_size
    # Which samples each micro-step draws, for the whole run, on the device once: no host -> device
    # copy (a stream sync) per step. Row n: micro-step n of this process.
    micro_steps = args.max_train_steps * args.gradient_accumulation_steps
    schedules = [draw_schedule(args.seed + order, encoded.size, micro_steps, batch, accelerator.num_processes,
                               accelerator.process_index, device) for order, encoded in enumerate((instances, classes)) if encoded is not None]

    def draw(encoded: EncodedSet, stream: Any, generator: Any, order: int) -> tuple[Any, ...]:
        index = schedules[order][stream.index]
        mean, std = encoded.latent_mean[index], encoded.latent_std[index]
        latents = (mean + std * torch.randn(mean.shape, generator=generator, device=device)) * scaling
        prompt = encoded.prompt[index]
        return latents, encoded.prompt_embeds[prompt], encoded.pooled[prompt], encoded.time_ids[index]

    def micro_step(modules: list[Any], stream: Any) -> tuple[Any, dict[str, Any]]:
        generator = stream.generator(device)
        drawn = [draw(instances, stream, generator, 0)]
        if classes is not None:
            drawn.append(draw(classes, stream, generator, 1))
        latents, embeds, pooled, stamps = (torch.cat(t) for t in zip(*drawn))
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = modules[0](noisy.to(dtype), timesteps, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": stamps}).sample
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        if classes is None:
            loss = F.mse_loss(pred.float(), target.float())
        else:
            pred, pred_prior = pred.chunk(2)
            target, target_prior = target.chunk(2)
            prior = F.mse_loss(pred_prior.float(), target_prior.float())
            loss = F.mse_loss(pred.float(), target.float()) + args.prior_loss_weight * prior
        return loss, {"loss": loss.detach()}

    def save_final() -> None:
        save_lora(unet, args.output)
        atomic_write_text(args.output / TOKENS_FILE, json.dumps(
            [{"token": t, "class_noun": c.class_noun, "instance_prompt": p} for t, c, p in zip(args.tokens, args.concepts, instance_prompts)], indent=2) + "\n")
        write_training_config(args, {"sdxl": {**ref.describe(), "resolved_revision": revision}}, {"instance_prompts": instance_prompts})

    return TrainingJob(
        modules=[unet], params=params, micro_step=micro_step, save_weights=lambda folder: save_lora(unet, folder),
        load_weights=lambda folder: set_lora(unet, folder / LORA_WEIGHT_NAME), save_final=save_final,
        output=args.output / LORA_WEIGHT_NAME, max_grad_norm=args.max_grad_norm,
    )


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "LoRA", argv)


if __name__ == "__main__":
    sys.exit(cli())
