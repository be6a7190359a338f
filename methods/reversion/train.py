"""Invert a relation into a token: ``relbench train reversion`` (or ``accelerate launch -m``).

ReVersion (Huang et al., SIGGRAPH Asia 2024) learns the input embedding of a new token ``<R>``
from a few exemplar images of one relation, with Stable Diffusion 1.5 frozen. One optimizer step::

    latents   = VAE(exemplar image) (encoded once, sampled each step)     noise
    t         ~ f(t) ∝ 1 - 0.5 cos(pi t / 1000)      (relation-focal importance sampling)
    prompt    = a coarse description with <R>: "cat <R> box"
    loss      = MSE(UNet(q(latents, t), t, CLIP(prompt)), noise)
              + 0.01 L_steer(<R>; positives = 4 random prepositions per sample,
                              negatives = the descriptions' entity words)

The defaults are the authors' recipe (README command of github.com/ziqihuangg/ReVersion): 3000
steps, batch 2 x 4 accumulation, learning rate 2.5e-4 scaled by batch x accumulation x processes,
constant schedule, AdamW (weight decay 1e-2), 512 px, initialised from "and", temperature 0.07,
seed 2023, full precision. Exemplars: a ReVersion folder (images + ``text.json``) or a
DreamRelation relation folder (see ``data.py``).

Arguments are parsed and validated before any model loads (``parse_args(argv)``); checkpoints are
written every ``--checkpointing-steps`` and ``--resume-from-checkpoint latest`` continues exactly:
the randomness of step n is a function of (seed, step, process) only.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError
from relbench.methods.reversion.models import MODEL_KEY
from relbench.training import (
    TrainingDefaults, TrainingJob, add_training_arguments, make_accelerator, require_non_negative, run_cli, run_training,
    step_generator, validate_training_arguments, weight_dtype_name, write_training_config,
)

DEFAULTS = TrainingDefaults(
    checkpointing_steps=500, train_batch_size=2, gradient_accumulation_steps=4, max_train_steps=3000, learning_rate=2.5e-4,
    adam_weight_decay=1e-2, seed=2023, full_resolution=512, mixed_precision="no", variant="",
    clipping=False, gradient_checkpointing=False,  # the authors' script neither clips nor checkpoints
    output_help="checkpoints and learned_embeds.safetensors go here (default: runs/reversion-<relation>)",
    model_help=f"replace the base model (key: {MODEL_KEY})",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relbench train reversion",
        description="Learn a ReVersion relation token <R> from exemplar images of one relation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--exemplars", type=Path, required=True,
                      help="a ReVersion folder (images + text.json with coarse descriptions like \"cat {} box\") "
                           "or a DreamRelation relation folder (prompts.json + videos/<i>/motion.png)")
    data.add_argument("--relation", default=None, help="name of the relation, for records (default: the folder's name)")
    data.add_argument("--center-crop", action="store_true", help="centre-crop to a square before resizing (the authors do not)")
    groups = add_training_arguments(p, DEFAULTS)
    groups["optimisation"].add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True,
                                        help="multiply the learning rate by batch size x accumulation x processes (the authors' --scale_lr)")
    token = p.add_argument_group("relation token")
    token.add_argument("--placeholder-token", default="<R>")
    token.add_argument("--initializer-token", default="and", help="a single-token word whose embedding <R> starts from")
    loss = p.add_argument_group("losses")
    loss.add_argument("--denoise-loss-weight", type=float, default=1.0)
    loss.add_argument("--steer-loss-weight", type=float, default=0.01)
    loss.add_argument("--num-positives", type=int, default=4, help="prepositions drawn per sample as L_steer positives")
    loss.add_argument("--temperature", type=float, default=0.07)
    loss.add_argument("--importance-sampling", action=argparse.BooleanOptionalAction, default=True,
                      help="relation-focal importance sampling of timesteps (off: uniform)")
    loss.add_argument("--scaled-cosine-alpha", type=float, default=0.5, help="skew of the sampling function, in [0, 1)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate every argument; a mistake is a RelbenchError before any model loads."""
    from relbench.methods.reversion.data import read_exemplar_folder
    from relbench.methods.reversion.losses import RELATION_WORDS

    args = build_parser().parse_args(argv)
    args.exemplars = args.exemplars.expanduser()
    if args.relation is None:
        args.relation = args.exemplars.name
    if args.output is None:
        args.output = Path("runs") / f"reversion-{args.relation}"
    validate_training_arguments(args, DEFAULTS)
    require_non_negative(args, ("denoise_loss_weight", "steer_loss_weight"))
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise RelbenchError(f"--temperature: expected a number > 0, got {args.temperature}")
    if not 0 <= args.scaled_cosine_alpha < 1:
        raise RelbenchError(f"--scaled-cosine-alpha: expected a number in [0, 1), got {args.scaled_cosine_alpha}")
    if args.steer_loss_weight > 0 and not 1 <= args.num_positives <= len(RELATION_WORDS):
        raise RelbenchError(f"--num-positives: expected 1..{len(RELATION_WORDS)} with the steering loss on, got {args.num_positives}")
    if args.denoise_loss_weight == 0 and args.steer_loss_weight == 0:
        raise RelbenchError("--denoise-loss-weight and --steer-loss-weight are both 0: nothing to train")
    if not args.placeholder_token or any(c.isspace() for c in args.placeholder_token) or "{" in args.placeholder_token:
        raise RelbenchError(f"--placeholder-token: expected one word without spaces or braces, e.g. <R>; got {args.placeholder_token!r}")
    if not args.initializer_token.strip() or len(args.initializer_token.split()) != 1:
        raise RelbenchError(f"--initializer-token: expected one word, got {args.initializer_token!r}")
    read_exemplar_folder(args.exemplars, load_images=False)  # layout and descriptions, before any model loads
    return args


# --------------------------------------------------------------------------------------------
# Models and cached inputs


@dataclass
class Setup:
    """What one training needs, built once."""

    text_encoder: Any  # CLIPTextModel whose token embedding is a RelationEmbedding
    embedding: Any  # the RelationEmbedding (its .relation is the only trainable tensor)
    unet: Any
    scaling_factor: float
    prediction_type: str
    placeholder_id: int
    latent_mean: Any  # (N, 4, h, w) VAE posterior of each exemplar
    latent_std: Any
    input_ids: Any  # (M, 77) every description with the placeholder, tokenized
    descriptions_of: list[list[int]]  # exemplar -> rows of input_ids
    excluded_ids: Any  # token ids that are never negatives
    positive_word_ids: list[list[int]]  # token ids of each relation word
    alphas_cumprod: Any  # (T,)
    timestep_probs: Any  # (T,) sampling distribution (CPU, float64)
    model_info: dict[str, Any]


def prepare(args: argparse.Namespace, device: str, weight_dtype: str) -> Setup:
    """Load SD 1.5, add the relation token, encode the exemplars once."""
    import torch
    from diffusers import DDPMScheduler

    from relbench.methods.reversion.data import read_exemplar_folder
    from relbench.methods.reversion.embeds import RelationEmbedding
    from relbench.methods.reversion.losses import excluded_token_ids, importance_probabilities, word_token_ids, RELATION_WORDS
    from relbench.methods.reversion.models import load_sd15
    from relbench.profiles import RunContext, torch_dtype

    context = RunContext(profile=args.profile, device=device, seed=args.tiny_seed, model_overrides=args.model_overrides)
    ref = context.model(MODEL_KEY)
    pipe, revision = load_sd15(ref, "float32", args.variant, args.tiny_seed)
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    if args.placeholder_token in tokenizer.get_vocab() or tokenizer.add_tokens(args.placeholder_token) != 1:
        raise RelbenchError(f"--placeholder-token: {args.placeholder_token!r} is already a token of the tokenizer; pick a new one")
    init_ids = tokenizer(args.initializer_token, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        raise RelbenchError(f"--initializer-token: {args.initializer_token!r} is {len(init_ids)} tokens; expected a single-token word such as 'and'")
    placeholder_id = tokenizer.convert_tokens_to_ids(args.placeholder_token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new row is set just below
    base = text_encoder.get_input_embeddings()
    embedding = RelationEmbedding(base, placeholder_id, base.weight.data[init_ids[0]])
    _replace_module(text_encoder, base, embedding)
    text_encoder.requires_grad_(False)
    embedding.relation.requires_grad_(True)
    dtype = torch_dtype(weight_dtype)
    text_encoder.to(device)  # trained through: stays float32
    # Cast only when needed: diffusers warns on every dtype cast through .to().
    unet = pipe.unet.to(device) if pipe.unet.dtype == dtype else pipe.unet.to(device, dtype=dtype)
    vae = pipe.vae.to(device) if pipe.vae.dtype == dtype else pipe.vae.to(device, dtype=dtype)
    unet.requires_grad_(False)
    vae.requires_grad_(False)

    exemplars = read_exemplar_folder(args.exemplars)
    pixels = torch.stack([_pixel_values(e.image, args.resolution, args.center_crop) for e in exemplars])
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pixels), 8):
            dist = vae.encode(pixels[start : start + 8].to(device, dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    texts, descriptions_of = [], []
    for exemplar in exemplars:
        descriptions_of.append(list(range(len(texts), len(texts) + len(exemplar.descriptions))))
        texts.extend(d.format(args.placeholder_token) for d in exemplar.descriptions)
    input_ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    if not bool((input_ids == placeholder_id).any(dim=1).all()):
        raise RelbenchError(f"{args.exemplars}: a description is so long that {args.placeholder_token} falls past the tokenizer's 77 tokens")
    noise_config = dict(pipe.scheduler.config)
    alphas_cumprod = DDPMScheduler.from_config(noise_config).alphas_cumprod.to(device)
    num_timesteps = len(alphas_cumprod)
    probs = importance_probabilities(num_timesteps, args.scaled_cosine_alpha) if args.importance_sampling \
        else torch.full((num_timesteps,), 1.0 / num_timesteps, dtype=torch.float64)
    info = {MODEL_KEY: {**ref.describe(), "resolved_revision": revision}}
    return Setup(
        text_encoder=text_encoder, embedding=embedding, unet=unet, scaling_factor=float(vae.config.scaling_factor),
        prediction_type=str(noise_config.get("prediction_type", "epsilon")), placeholder_id=placeholder_id,
        latent_mean=torch.cat(means), latent_std=torch.cat(stds), input_ids=input_ids.to(device),
        descriptions_of=descriptions_of, excluded_ids=torch.tensor(excluded_token_ids(tokenizer, placeholder_id), device=device),
        positive_word_ids=word_token_ids(tokenizer, RELATION_WORDS), alphas_cumprod=alphas_cumprod,
        timestep_probs=probs, model_info=info,
    )


def _replace_module(model: Any, old: Any, new: Any) -> None:
    """Put ``new`` where ``old`` sits in ``model`` (found by identity: the attribute path of the token
    embedding differs between transformers versions)."""
    for module in model.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new)
                return
    raise RuntimeError("the text encoder's token embedding was not found among its modules")


def _pixel_values(image: Any, resolution: int, center_crop: bool) -> Any:
    """ReVersion's preprocessing: optional centre crop, bicubic resize to a square, [-1, 1], no flip
    (a mirror image could change the relation)."""
    import numpy as np
    import torch
    from PIL import Image

    if center_crop:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = image.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


# --------------------------------------------------------------------------------------------
# Training


def step_generators(seed: int, step: int, process: int, device: Any) -> tuple[Any, Any]:
    """(CPU generator for discrete choices, device generator for noise) of one micro-step, both
    seeded with ``relbench.training.step_seed(seed, step, process)``."""
    return step_generator(seed, step, process, "cpu"), step_generator(seed, step, process, device)


def training_step(setup: Setup, text_encoder: Any, args: argparse.Namespace, choices: Any, noise_generator: Any,
                  timesteps: Any = None) -> tuple[Any, dict[str, Any]]:
    """The loss of one micro-batch (with its graph) and its detached terms.

    ``text_encoder`` is what to call (wrapped for data parallelism when prepared by Accelerate).
    """
    import torch
    import torch.nn.functional as F

    from relbench.methods.reversion.losses import negative_mask, sample_positive_ids, steer_loss

    device = setup.latent_mean.device
    batch = args.train_batch_size
    index = torch.randint(0, len(setup.descriptions_of), (batch,), generator=choices)
    rows = [setup.descriptions_of[i][int(torch.randint(0, len(setup.descriptions_of[i]), (1,), generator=choices))] for i in index.tolist()]
    drawn = torch.multinomial(setup.timestep_probs, batch, replacement=True, generator=choices)
    positive_ids = [t for _ in range(batch) for t in sample_positive_ids(setup.positive_word_ids, args.num_positives, choices)]
    timesteps = (drawn if timesteps is None else timesteps).to(device)

    index = index.to(device)
    mean, std = setup.latent_mean[index], setup.latent_std[index]
    latents = (mean + std * torch.randn(mean.shape, generator=noise_generator, device=device)) * setup.scaling_factor
    noise = torch.randn(latents.shape, generator=noise_generator, device=device)
    alpha = setup.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    input_ids = setup.input_ids[torch.tensor(rows, device=device)]
    states = text_encoder(input_ids)[0]
    dtype = setup.unet.dtype
    prediction = setup.unet(noisy.to(dtype), timesteps, encoder_hidden_states=states.to(dtype)).sample
    if setup.prediction_type == "epsilon":
        target = noise
    elif setup.prediction_type == "v_prediction":
        target = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    else:
        raise RelbenchError(f"the base model's scheduler predicts {setup.prediction_type!r}; expected epsilon or v_prediction")
    denoise = F.mse_loss(prediction.float(), target.float())
    loss = args.denoise_loss_weight * denoise
    logs: dict[str, Any] = {"denoise": denoise.detach()}
    if args.steer_loss_weight > 0:
        base = setup.embedding.base
        negatives = base(input_ids[negative_mask(input_ids, setup.excluded_ids)])
        positives = base(torch.tensor(positive_ids, device=device))
        steer = steer_loss(setup.embedding.relation, positives, negatives, args.temperature)
        loss = loss + args.steer_loss_weight * steer
        logs["steer"] = steer.detach()
    logs["loss"] = loss.detach()
    return loss, logs


def main(argv: list[str] | None = None) -> Path:
    """Train; returns the path of the saved ``learned_embeds.safetensors``."""
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    return run_training(accelerator, args, training_job(args, accelerator), desc=f"reversion {args.relation}")


def training_job(args: argparse.Namespace, accelerator: Any) -> TrainingJob:
    """The relation token's vector, trained through the frozen text encoder."""
    import torch

    from relbench.hashing import file_sha256
    from relbench.methods.reversion.embeds import EMBEDS_NAME, read_learned_embeds, save_learned_embeds

    with accelerator.main_process_first():  # one process fills the HF cache, the others read it
        setup = prepare(args, str(accelerator.device), weight_dtype_name(accelerator))
    learning_rate = args.learning_rate
    if args.scale_lr:  # the authors' --scale_lr
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes

    def micro_step(modules: list[Any], stream: Any) -> tuple[Any, dict[str, Any]]:
        return training_step(setup, modules[0], args, stream.generator(), stream.generator(accelerator.device))

    # Checkpoints hold the relation vector only (not the text encoder).
    def load_weights(folder: Path) -> None:
        _, vector = read_learned_embeds(folder / EMBEDS_NAME)
        with torch.no_grad():
            setup.embedding.relation.copy_(vector.to(setup.embedding.relation.device))

    def save_final() -> None:
        metadata = {"relbench_relation": args.relation, "relbench_steps": str(args.max_train_steps), "relbench_profile": args.profile}
        path = save_learned_embeds(setup.embedding.relation, args.placeholder_token, args.output, metadata=metadata)
        write_training_config(args, {
            "effective_learning_rate": learning_rate, "processes": accelerator.num_processes, "models": setup.model_info,
            "embeds_sha256": file_sha256(path),
        }, str(setup.unet.device))

    return TrainingJob(
        modules=[setup.text_encoder], params=[setup.embedding.relation], micro_step=micro_step,
        save_weights=lambda folder: save_learned_embeds(setup.embedding.relation, args.placeholder_token, folder),
        load_weights=load_weights, save_final=save_final, output=args.output / EMBEDS_NAME, learning_rate=learning_rate,
        checkpoint_last_step=True,
    )


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "embedding", argv)


if __name__ == "__main__":
    sys.exit(cli())
