"""Train a DreamRelation relation LoRA: ``relbench train dreamrelation`` (or ``accelerate launch -m``).

One self-contained entry in the style of diffusers' ``train_dreambooth_lora_sdxl.py``: arguments
are parsed and validated before any model loads (``parse_args(argv)``), Accelerate handles devices,
processes and mixed precision, checkpoints are written every ``--checkpointing-steps`` and
``--resume-from-checkpoint latest`` continues exactly where the last one stopped.

What one optimizer step does (losses in ``losses.py``, data in ``data.py``)::

    latents  = VAE(motion image) (cached)         noise, t ~ U[0, 1000)      noisy = q(latents, t)
    context  = [text (77) | dummy (4) | resampler(concept images, phrases, boxes) (16 per subject)]
    eps      = UNet + relation LoRA (noisy, t, context, boxes)   text attention maps recorded
    loss     = MSE(eps, noise) + 0.1 KML(x0(eps), concept latents, keypoints) [t <= 333, per sample]
               + 0.001 L_attn(predicate maps, subject masks)

Augmentation and speed: the reference draws its random resize-crop afresh for every step and
re-encodes every image. Here each example gets ``--augment-variants`` (8) augmented variants,
each a draw of the same transform fixed by (seed, example, variant) (``variant_generator``): the
motion image with its masks, keypoints and SDXL time ids, and each concept image with its
keypoints. They go through the VAE once (the latent distribution is cached and sampled each
step), and every step picks one variant at random. So training sees 8 draws per example instead of
one per step, in exchange for no encoder in the step loop; the concept images also go through the
image encoder once and every prompt and phrase through the text encoders once. Loss values are accumulated on the device and read back only when the progress bar is
updated (``--log-every``), so the step loop has no host-device synchronisation.

Randomness is a function of (seed, step, process): the batch, the noise and the timesteps of step
``n`` are the same whether the run was resumed or not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError
from relbench.training import (
    HelpFormatter, TrainingDefaults, TrainingJob, add_training_arguments, make_accelerator, require_non_negative, require_positive, run_cli,
    run_training, step_generator, validate_training_arguments, weight_dtype_name, write_training_config,
)

AUGMENTATIONS = ("reference", "none")
DEFAULTS = TrainingDefaults(
    checkpointing_steps=100, train_batch_size=1, gradient_accumulation_steps=4, max_train_steps=500, learning_rate=1e-4,
    adam_weight_decay=1e-4, resolution_multiple=16, tiny_seed=False,
    output_help="checkpoints and pytorch_lora_weights.safetensors go here (default: runs/dreamrelation-<relation>)",
    model_help="replace a pretrained model (sdxl, ms_adapter, image_encoder, dense_encoder)",
)
LOGGED = ("loss", "diffusion", "kml", "attn")  # the loss terms on the progress bar


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relbench train dreamrelation",
        description="Train a DreamRelation relation LoRA on DreamRelation-format triplets.",
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data-root", type=Path, default=None,
                      help="folder holding <relation>/prompts.json, videos/, masks/; default <data root>/dreamrelation "
                           "($RELBENCH_DATA_ROOT or ~/.cache/relbench/data); a data root holding dreamrelation/ works too")
    data.add_argument("--relation", required=True, help="relation folder to train on, e.g. hug")
    data.add_argument("--skeleton", default="ap10k", help="keypoint order of the data (ap10k or coco): used to swap left/right on flips")
    data.add_argument("--augment", choices=AUGMENTATIONS, default="reference",
                      help="'reference': the reference's random resize-crop (letterbox to a square, with probability 0.5 a crop "
                           "first; keypoints and masks follow); 'none': the whole image letterboxed in the middle")
    data.add_argument("--flip", action="store_true",
                      help="also mirror motion images with probability 0.5 (keypoints swap left/right by --skeleton); "
                           "the reference never flips")
    data.add_argument("--augment-variants", type=int, default=8,
                      help="augmented variants of each example drawn (from --seed) and encoded once before training; "
                           "each step picks one (1 when nothing is random)")
    groups = add_training_arguments(p, DEFAULTS)
    groups["models"].add_argument("--scale", type=float, default=0.6, help="adapter image-attention scale")
    lora = p.add_argument_group("LoRA and what trains")
    lora.add_argument("--rank", type=int, default=4, help="LoRA rank")
    lora.add_argument("--lora-alpha", type=float, default=4.0, help="LoRA alpha (the update is scaled by alpha / rank)")
    lora.add_argument("--train-resampler", action="store_true", help="also train the grounding resampler (needed for local features)")
    lora.add_argument("--local-features", action="store_true",
                      help="16 dense local tokens per subject (DreamRelation's fix for confusion); needs --train-resampler and, "
                           "in the full profile, a dense image encoder (--model dense_encoder=DIR)")
    loss = p.add_argument_group("losses")
    loss.add_argument("--kml-weight", type=float, default=0.1, help="weight of the keypoint matching loss (KML)")
    loss.add_argument("--kml-max-timestep", type=int, default=333, help="KML only for samples with a timestep up to this")
    loss.add_argument("--attn-weight", type=float, default=0.001, help="weight of the attention loss (L_attn)")
    loss.add_argument("--attn-max-queries", type=int, default=None, help="layers with at most this many positions give attention maps (default: the UNet's deepest cross-attention level, 32x32 for SDXL at 1024 px)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate every argument; a mistake is a RelbenchError before any model loads."""
    args = build_parser().parse_args(argv)
    from relbench.data_root import resolve_data_root

    if args.output is None:
        args.output = Path("runs") / f"dreamrelation-{args.relation}"
    validate_training_arguments(args, DEFAULTS)
    if args.data_root is None:
        args.data_root = resolve_data_root(None) / "dreamrelation"
    elif not (args.data_root / args.relation).is_dir() and (args.data_root / "dreamrelation" / args.relation).is_dir():
        args.data_root = args.data_root / "dreamrelation"  # a relbench data root was given
    require_positive(args, ("rank", "augment_variants"))
    require_non_negative(args, ("kml_weight", "attn_weight", "lora_alpha", "scale"))
    if not 0 <= args.kml_max_timestep < 1000:
        raise RelbenchError(f"--kml-max-timestep: expected 0..999, got {args.kml_max_timestep}")
    relation_dir = args.data_root / args.relation
    if not (relation_dir / "prompts.json").is_file():
        raise RelbenchError(f"{relation_dir}: not a DreamRelation relation folder (no prompts.json); check --data-root and --relation")
    from relbench.methods.dreamrelation.data import get_skeleton, validate_relation_dir

    get_skeleton(args.skeleton)
    problems = validate_relation_dir(args.data_root, args.relation)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RelbenchError(f"{problems[0]}{more}")
    if args.local_features:
        if not args.train_resampler:
            raise RelbenchError("--local-features: add --train-resampler; the resampler must learn the 16 local tokens per subject")
        if args.profile == "full" and "dense_encoder" not in args.model_overrides:
            # The reference's tokens come from a CLIPSelf-distilled ViT-bigG with no public download:
            # without a dense encoder the option stays off rather than pretending.
            raise RelbenchError(
                "--local-features: no dense image encoder given; pass --model dense_encoder=DIR (a CLIPVisionModel folder, e.g. "
                "the CLIPSelf ViT-bigG/14 converted with relbench.methods.ms_diffusion.local_features.convert_open_clip_checkpoint)"
            )
    return args


# --------------------------------------------------------------------------------------------
# Cached inputs


@dataclass
class CachedTriplets:
    """Everything the frozen encoders produce for the training set, computed once.

    Per-image tensors have a leading variant axis V after the example axis T: variant v of example
    t is one draw of the augmentation (``augmentation``) applied to its motion image (with masks
    and keypoints) and to its concept images (with keypoints), fixed by (seed, t, v).
    """

    motion_mean: Any  # (T, V, 4, h, w) VAE latent distribution mean (unscaled)
    motion_std: Any  # (T, V, 4, h, w)
    masks: Any  # (T, V, N, 1, H, W) bool subject masks in entity order
    boxes: Any  # (T, V, N, 4) normalised xyxy of each mask
    rel_keypoints: Any  # (T, V, N, K, 2), instance i on entity i
    rel_visibility: Any  # (T, V, N, K) bool
    time_ids: Any  # (T, V, 6) SDXL micro-conditioning of the motion image: original (h, w), crop (top, left), target (h, w)
    concept_latents: Any  # (T, V, N, 4, h, w) posterior mean, scaled: the KML target
    concept_keypoints: Any  # (T, V, N, K, 2)
    concept_visibility: Any  # (T, V, N, K) bool
    image_embeds: Any  # (T, N, L, D) image encoder tokens of the concept images
    phrase_embeds: Any  # (T, N, P) pooled phrase embeddings
    prompt_embeds: Any  # (T, 77, C) both text encoders' penultimate states, concatenated
    pooled_prompt_embeds: Any  # (T, C2)
    predicate_mask: Any  # (T, 77) bool
    prompts: list[str]

    @property
    def size(self) -> int:
        return int(self.motion_mean.shape[0])

    @property
    def variants(self) -> int:
        return int(self.motion_mean.shape[1])


def augmentation(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """(motion transform, concept transform, cached variants per example) for the arguments.

    ``--augment reference``: the reference's RandomResizeCrop (letterbox to the square
    resolution, with probability 0.5 its crop first, at a random offset), on the motion image and,
    drawn independently, on each concept image; ``none``: the whole image letterboxed in the
    middle. ``--flip`` mirrors motion images with probability 0.5 (never concept images: KML
    matches keypoint k to keypoint k). One variant when nothing is random.
    """
    from relbench.methods.dreamrelation.data import REFERENCE_CROP_P, TripletTransform

    reference = args.augment == "reference"
    concept = TripletTransform(args.resolution, crop_p=REFERENCE_CROP_P if reference else 0.0, random_offset=reference)
    motion = TripletTransform(args.resolution, crop_p=concept.crop_p, random_offset=reference,
                              hflip_p=0.5 if args.flip else 0.0, skeleton=args.skeleton if args.flip else None)
    return motion, concept, args.augment_variants if reference or args.flip else 1


def variant_generator(seed: int, example: int, variant: int, image: int) -> Any:
    """The augmentation draw of one cached image (image 0: the motion image, j + 1: concept j):
    a function of these four numbers only, so that every process and every resumed run caches
    the same variants."""
    import hashlib

    import torch

    digest = hashlib.sha256(f"{seed}/{example}/{variant}/{image}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)


def sdxl_time_ids(source_size: tuple[int, int], placement: Any, resolution: int) -> list[int]:
    """SDXL's micro-conditioning for a training image as SDXL was trained: the image's original
    (h, w), the crop's (top, left) (``Placement.crop_top_left``), the target (h, w) = the training
    resolution. ``source_size`` is (width, height)."""
    from relbench.methods.finetune_common import time_ids

    width, height = source_size
    return time_ids((height, width), placement.crop_top_left(source_size), (resolution, resolution))


def build_cache(models: Any, data_root: Path, relation: str, args: argparse.Namespace, device: Any, dtype: Any) -> CachedTriplets:
    """Read the relation's triplets and encode ``augmentation(args)``'s variants of each (``args``:
    resolution, augment, flip, augment_variants, skeleton, seed)."""
    import torch
    from PIL import Image

    from relbench.methods.dreamrelation.data import associate_instances, load_mask, read_relation_dir, to_pixel_values
    from relbench.methods.dreamrelation.losses import predicate_token_mask

    triplets = read_relation_dir(data_root, relation)
    counts = {(t.num_entities, t.num_keypoints) for t in triplets}
    if len(counts) != 1:
        raise RelbenchError(f"{data_root / relation}: triplets mix (entities, keypoints) counts {sorted(counts)}; train one kind at a time")
    motion_transform, concept_transform, variants = augmentation(args)
    permutation = motion_transform.flip_permutation(triplets[0].num_keypoints)
    vae = models.vae
    scaling = float(vae.config.scaling_factor)

    def vae_dist(pixels: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        with torch.no_grad():
            dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def stack(rows: list[list[Any]]) -> "torch.Tensor":  # (T, V, ...) from per-example lists of per-variant tensors
        return torch.stack([torch.stack(row) for row in rows])

    names = ("motion_mean", "motion_std", "masks", "boxes", "rel_kp", "rel_vis", "time_ids", "concept_latents", "concept_kp", "concept_vis")
    per_example: dict[str, list[list[Any]]] = {name: [] for name in names}
    concept_images = []
    for t, triplet in enumerate(triplets):
        raw_masks = [load_mask(p) for p in triplet.masks]
        order = associate_instances(triplet.keypoints, raw_masks, triplet.visibility)
        keypoints, visibility = triplet.keypoints[order], triplet.visibility[order]
        with Image.open(triplet.motion_image) as motion:
            motion = motion.convert("RGB")
        concepts = []
        for path in triplet.concept_images:
            with Image.open(path) as concept:
                concepts.append(concept.convert("RGB"))
        concept_images.append(concepts)
        rows: dict[str, list[Any]] = {name: [] for name in names}
        # One variant at a time: at 1024 px a batch of V images through the VAE would not fit.
        for v in range(variants):
            place = motion_transform.sample(motion.size, variant_generator(args.seed, t, v, 0))
            xy, shown = place.keypoints(keypoints, visibility, motion.size, permutation)
            placed_masks = [place.mask(m) for m in raw_masks]
            mean, std = vae_dist(to_pixel_values(place.image(motion))[None])
            rows["motion_mean"].append(mean[0])
            rows["motion_std"].append(std[0])
            rows["masks"].append(torch.stack([torch.from_numpy(m)[None] for m in placed_masks]))
            rows["boxes"].append(torch.tensor([_mask_box(m) for m in placed_masks], dtype=torch.float32))
            rows["rel_kp"].append(xy)
            rows["rel_vis"].append(shown)
            rows["time_ids"].append(torch.tensor(sdxl_time_ids(motion.size, place, args.resolution), dtype=torch.float32))
            pixels, kps, vis = [], [], []
            for j, (concept, concept_xy, concept_shown) in enumerate(zip(concepts, triplet.concept_keypoints, triplet.concept_visibility)):
                concept_place = concept_transform.sample(concept.size, variant_generator(args.seed, t, v, j + 1))
                kp, sh = concept_place.keypoints(concept_xy, concept_shown, concept.size, None)
                pixels.append(to_pixel_values(concept_place.image(concept)))
                kps.append(kp[0])
                vis.append(sh[0])
            rows["concept_latents"].append(vae_dist(torch.stack(pixels))[0] * scaling)
            rows["concept_kp"].append(torch.stack(kps))
            rows["concept_vis"].append(torch.stack(vis))
        for name in names:
            per_example[name].append(rows[name])
    cached = {name: stack(per_example[name]).to(device) for name in names}

    encoder = models.encoder
    with torch.no_grad():
        image_embeds = encoder.encode_images(concept_images).float()
        phrase_embeds = encoder.encode_phrases([list(t.entities) for t in triplets]).float()
        prompts = [t.prompt for t in triplets]
        prompt_embeds, pooled = encode_prompts(models, prompts, device)
    predicate = predicate_token_mask(models.tokenizer, prompts, [list(t.predicate) for t in triplets])
    return CachedTriplets(
        motion_mean=cached["motion_mean"], motion_std=cached["motion_std"], masks=cached["masks"], boxes=cached["boxes"],
        rel_keypoints=cached["rel_kp"], rel_visibility=cached["rel_vis"], time_ids=cached["time_ids"],
        concept_latents=cached["concept_latents"], concept_keypoints=cached["concept_kp"], concept_visibility=cached["concept_vis"],
        image_embeds=image_embeds.to(device, dtype), phrase_embeds=phrase_embeds.to(device, dtype),
        prompt_embeds=prompt_embeds.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype),
        predicate_mask=predicate.to(device), prompts=prompts,
    )


def encode_prompts(models: Any, prompts: list[str], device: Any) -> tuple[Any, Any]:
    """SDXL's prompt encoding ((B, 77, 2048) states, (B, 1280) pooled), as its pipeline does it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=models.vae, text_encoder=models.text_encoder, text_encoder_2=models.text_encoder_2, tokenizer=models.tokenizer,
        tokenizer_2=models.tokenizer_2, unet=models.unet, scheduler=EulerDiscreteScheduler.from_config(models.scheduler_config),
        add_watermarker=False,
    )
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    return embeds, pooled


def _mask_box(mask: Any) -> tuple[float, float, float, float]:
    """Normalised xyxy of a binary mask's foreground (the whole image when it is empty)."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 1.0, 1.0)
    height, width = mask.shape
    return (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)


# --------------------------------------------------------------------------------------------
# Training


def training_step(models: Any, unet: Any, resampler: Any, cache: CachedTriplets, weights: Any, store: Any, generator: Any,
                  args: argparse.Namespace, alphas_cumprod: Any, timesteps: Any = None) -> tuple[Any, dict[str, Any]]:
    """Loss of one micro-batch (with its autograd graph) and its detached terms.

    ``unet`` and ``resampler`` are what to call (wrapped for data parallelism when prepared by
    Accelerate); ``models`` holds the unwrapped modules.
    """
    import torch

    from relbench.methods.dreamrelation.losses import (
        diffusion_loss, keypoint_matching_loss, predict_x0, relation_attention_loss,
    )

    device = cache.motion_mean.device
    batch = args.train_batch_size
    index = torch.randint(0, cache.size, (batch,), generator=generator, device=device)
    variant = torch.randint(0, cache.variants, (batch,), generator=generator, device=device)
    mean, std = cache.motion_mean[index, variant], cache.motion_std[index, variant]
    latents = (mean + std * torch.randn(mean.shape, generator=generator, device=device)) * float(models.vae.config.scaling_factor)
    noise = torch.randn(latents.shape, generator=generator, device=device)
    drawn = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator, device=device)
    timesteps = drawn if timesteps is None else timesteps.to(device)
    alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise

    dtype = models.unet.dtype
    boxes = cache.boxes[index, variant]  # (B, N, 4)
    # The adapter's image context, through ``resampler`` (wrapped when it trains): dummy tokens, then
    # num_queries tokens per subject; (B, num_dummy + N * Q, C).
    subjects = resampler(cache.image_embeds[index], cache.phrase_embeds[index], boxes.to(dtype))
    dummy = models.adapter.dummy_image_tokens.expand(batch, -1, -1)
    context = torch.cat([cache.prompt_embeds[index], dummy.to(dtype), subjects.to(dtype)], dim=1)
    store.clear()
    kwargs = models.adapter.cross_attention_kwargs(boxes.to(dtype), scale=args.scale, latent_size=tuple(latents.shape[-2:]),
                                                   store=store if weights.use_attn else None)
    eps = unet(
        noisy.to(dtype), timesteps, encoder_hidden_states=context,
        added_cond_kwargs={"text_embeds": cache.pooled_prompt_embeds[index], "time_ids": cache.time_ids[index, variant].to(dtype)},
        cross_attention_kwargs=kwargs,
    ).sample

    terms: dict[str, Any] = {"diffusion": diffusion_loss(eps, noise)}
    stats: dict[str, Any] = {}
    if weights.use_kml:
        x0 = predict_x0(noisy.float(), eps.float(), timesteps, alphas_cumprod)
        terms["kml"], kml_stats = keypoint_matching_loss(
            x0, cache.concept_latents[index, variant], cache.rel_keypoints[index, variant], cache.concept_keypoints[index, variant],
            cache.rel_visibility[index, variant], cache.concept_visibility[index, variant], timesteps, args.kml_max_timestep,
        )
        stats.update(kml_stats)
    if weights.use_attn:
        terms["attn"], attn_stats = relation_attention_loss(
            store.maps, cache.predicate_mask[index], cache.masks[index, variant], tuple(latents.shape[-2:]),
        )
        stats.update(attn_stats)
    store.clear()  # maps hold activations: never keep them past the step
    return weights.combine(terms["diffusion"], terms.get("kml"), terms.get("attn"), stats)


def coarsest_cross_attention_queries(unet: Any, latent_side: int) -> int:
    """Query positions of the UNet's deepest cross-attention level (32 x 32 for SDXL at 1024 px).

    The paper's L_attn uses the layers with at most 32 x 32 queries at 1024 px, which are SDXL's
    deepest cross-attention level; this finds that level for any UNet and resolution.
    """
    levels = [i for i, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)]
    if not levels:
        raise RelbenchError("the UNet has no cross-attention level: the relation attention loss cannot be computed")
    side = latent_side
    for _ in range(max(levels)):
        side = (side + 1) // 2  # stride-2 convolution with padding 1
    return side * side


@dataclass
class Setup:
    """What one training (or a fixed-batch evaluation) needs, built once."""

    models: Any
    cache: CachedTriplets
    weights: Any  # DreamRelationLoss
    store: Any  # AttentionStore
    trainable: list[Any]
    alphas_cumprod: Any


def prepare(args: argparse.Namespace, device: str, weight_dtype: str) -> Setup:
    """Load the models, attach the LoRA, encode and cache the training set."""
    import torch
    from diffusers import DDPMScheduler

    from relbench.methods.dreamrelation.lora import add_relation_lora
    from relbench.methods.dreamrelation.losses import DreamRelationLoss
    from relbench.methods.ms_diffusion.attention import AttentionStore
    from relbench.methods.ms_diffusion.models import load_models
    from relbench.profiles import RunContext

    context = RunContext(profile=args.profile, device=device, seed=0, model_overrides=args.model_overrides)
    models = load_models(context, dtype=weight_dtype, variant=args.variant, vae_float32=True, local_features=args.local_features)
    trainable = list(add_relation_lora(models.unet, args.rank, args.lora_alpha, seed=args.seed))
    if args.train_resampler:
        models.adapter.image_proj.requires_grad_(True)
        trainable += list(models.adapter.image_proj.parameters())
    for param in trainable:  # trained weights stay float32 under mixed precision
        param.data = param.data.float()
    if args.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
    cache = build_cache(models, args.data_root, args.relation, args, torch.device(device), models.unet.dtype)
    alphas_cumprod = DDPMScheduler.from_config(models.scheduler_config).alphas_cumprod.to(device)
    weights = DreamRelationLoss(kml_weight=args.kml_weight, attn_weight=args.attn_weight, kml_max_timestep=args.kml_max_timestep,
                                use_kml=args.kml_weight > 0, use_attn=args.attn_weight > 0)
    max_queries = args.attn_max_queries or coarsest_cross_attention_queries(models.unet, args.resolution // models.vae_scale_factor)
    return Setup(models, cache, weights, AttentionStore(max_queries=max_queries), trainable, alphas_cumprod)


def fixed_batch_losses(argv: list[str], lora: Path | None = None, timestep: int = 200, seed: int = 1234) -> dict[str, float]:
    """The loss terms of one fixed batch (fixed triplets, variants, noise and timestep), no update.

    For checking that training moves the losses: compare before (``lora=None``) and after.
    The timestep is fixed so that KML (gated to t <= 333) always counts.
    """
    import torch

    from relbench.methods.dreamrelation.lora import lora_rank, read_lora_config, read_lora_file

    args = parse_args(argv)
    if lora is not None:
        # The adapter takes the file's rank and alpha (alpha = rank for files without metadata, as diffusers reads them).
        state = read_lora_file(Path(lora))
        rank = lora_rank(state) or args.rank
        config = read_lora_config(Path(lora)) or {"r": rank, "lora_alpha": float(rank)}
        args.rank, args.lora_alpha = int(config["r"]), float(config["lora_alpha"])
    setup = prepare(args, "cpu" if args.device in ("auto", "cpu") else args.device, "float32")
    if lora is not None:
        _set_lora(setup.models.unet, state, Path(lora))
    generator = step_generator(seed, 0, 0, setup.cache.motion_mean.device)
    timesteps = torch.full((args.train_batch_size,), timestep, dtype=torch.long)
    with torch.no_grad():
        _, logs = training_step(setup.models, setup.models.unet, setup.models.adapter.image_proj, setup.cache, setup.weights,
                                setup.store, generator, args, setup.alphas_cumprod, timesteps=timesteps)
    return {key: float(value) for key, value in logs.items()}


def main(argv: list[str] | None = None) -> Path:
    """Train; returns the path of the saved ``pytorch_lora_weights.safetensors``."""
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    return run_training(accelerator, args, training_job(args, accelerator), desc=f"dreamrelation {args.relation}")


def training_job(args: argparse.Namespace, accelerator: Any) -> TrainingJob:
    """The relation LoRA (and the resampler with ``--train-resampler``) on the cached training set."""
    from relbench.hashing import file_sha256
    from relbench.methods.dreamrelation.lora import LORA_WEIGHT_NAME, read_lora_file, save_relation_lora
    from relbench.methods.ms_diffusion.local_features import GRID, RESAMPLER_WEIGHT_NAME, load_resampler, save_resampler

    with accelerator.main_process_first():  # one process fills the HF cache, the others read it
        setup = prepare(args, str(accelerator.device), weight_dtype_name(accelerator))
    models = setup.models
    local_grid = GRID if args.local_features else None

    def micro_step(modules: list[Any], stream: Any) -> tuple[Any, dict[str, Any]]:
        resampler = modules[1] if args.train_resampler else models.adapter.image_proj
        loss, logs = training_step(models, modules[0], resampler, setup.cache, setup.weights, setup.store,
                                   stream.generator(accelerator.device), args, setup.alphas_cumprod)
        return loss, {key: logs[key] for key in LOGGED if key in logs}

    # Checkpoints hold the LoRA (and resampler) weights only.
    def save_weights(folder: Path) -> None:
        save_relation_lora(models.unet, folder)
        if args.train_resampler:
            save_resampler(models.adapter.image_proj, folder, local_grid)

    def load_weights(folder: Path) -> None:
        _set_lora(models.unet, read_lora_file(folder / LORA_WEIGHT_NAME), folder / LORA_WEIGHT_NAME)
        if args.train_resampler:
            load_resampler(models.adapter.image_proj, folder / RESAMPLER_WEIGHT_NAME, local_grid)

    def save_final() -> None:
        metadata = {"relbench_relation": args.relation, "relbench_steps": str(args.max_train_steps), "relbench_profile": args.profile}
        path = save_relation_lora(models.unet, args.output, metadata=metadata)
        resampler = args.output / RESAMPLER_WEIGHT_NAME
        if args.train_resampler:  # inference loads it from beside the LoRA
            save_resampler(models.adapter.image_proj, args.output, local_grid, metadata=metadata)
        write_training_config(args, {
            "models": models.describe(), "lora_sha256": file_sha256(path),
            "image_proj_sha256": file_sha256(resampler) if args.train_resampler and resampler.is_file() else None,
        }, str(models.unet.device))

    return TrainingJob(
        modules=[models.unet, models.adapter.image_proj] if args.train_resampler else [models.unet], params=setup.trainable,
        micro_step=micro_step, save_weights=save_weights, load_weights=load_weights, save_final=save_final,
        output=args.output / LORA_WEIGHT_NAME, max_grad_norm=args.max_grad_norm, checkpoint_last_step=True,
    )


def _set_lora(unet: Any, state: dict[str, Any], path: Path) -> None:
    """Load ``path``'s weights (``state``) into the UNet's relation adapter, which must have the
    file's rank and alpha: the same weights at another alpha are another model."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    from relbench.methods.dreamrelation.lora import ADAPTER_NAME, lora_config, lora_rank, read_lora_config

    saved = read_lora_config(path)
    rank = saved["r"] if saved else lora_rank(state)
    alpha = float(saved["lora_alpha"]) if saved else float(rank or 0)  # diffusers' reading of a file without metadata
    current = lora_config(unet)
    if (rank, alpha) != (current["r"], current["lora_alpha"]):
        raise RelbenchError(f"{path}: LoRA of rank {rank}, alpha {alpha:g}, but this run's adapter has rank {current['r']}, "
                            f"alpha {current['lora_alpha']:g}; use the same --rank and --lora-alpha")

    unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RelbenchError(f"checkpoint LoRA has keys this UNet lacks, e.g. {unexpected[0]}")


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "LoRA", argv)


if __name__ == "__main__":
    sys.exit(cli())
