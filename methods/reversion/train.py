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
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError
from relbench.training import check_output_and_resume, resume, run_cli, save_checkpoint

PROFILES = ("tiny", "full")
MIXED_PRECISION = ("no", "fp16", "bf16")


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
    out = p.add_argument_group("output")
    out.add_argument("--output", "--output-dir", dest="output", type=Path, default=None,
                     help="checkpoints and learned_embeds.safetensors go here (default: runs/reversion-<relation>)")
    out.add_argument("--checkpointing-steps", type=int, default=500, help="save a resumable checkpoint every N optimizer steps")
    out.add_argument("--checkpoints-total-limit", type=int, default=None, help="keep at most this many checkpoints")
    out.add_argument("--resume-from-checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    models = p.add_argument_group("models")
    models.add_argument("--profile", choices=PROFILES, default="full", help="'tiny': random tiny SD 1.5 from configs (CPU, offline)")
    models.add_argument("--model", action="append", default=[], metavar="KEY=ID_OR_PATH", help="replace the base model (key: sd15)")
    models.add_argument("--variant", default="", help="weight files variant of the SD folder, e.g. fp16 (default: full-precision files)")
    models.add_argument("--tiny-seed", type=int, default=0, help="seed of the tiny profile's random weights (must match the generating run's)")
    token = p.add_argument_group("relation token")
    token.add_argument("--placeholder-token", default="<R>")
    token.add_argument("--initializer-token", default="and", help="a single-token word whose embedding <R> starts from")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--resolution", type=int, default=None, help="training resolution (default: 512 full, 64 tiny)")
    opt.add_argument("--train-batch-size", type=int, default=2)
    opt.add_argument("--gradient-accumulation-steps", type=int, default=4)
    opt.add_argument("--max-train-steps", type=int, default=3000)
    opt.add_argument("--learning-rate", type=float, default=2.5e-4)
    opt.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True,
                     help="multiply the learning rate by batch size x accumulation x processes (the authors' --scale_lr)")
    opt.add_argument("--adam-beta1", type=float, default=0.9)
    opt.add_argument("--adam-beta2", type=float, default=0.999)
    opt.add_argument("--adam-weight-decay", type=float, default=1e-2)
    opt.add_argument("--adam-epsilon", type=float, default=1e-8)
    opt.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no", help="the authors train in full precision")
    opt.add_argument("--seed", type=int, default=2023)
    loss = p.add_argument_group("losses")
    loss.add_argument("--denoise-loss-weight", type=float, default=1.0)
    loss.add_argument("--steer-loss-weight", type=float, default=0.01)
    loss.add_argument("--num-positives", type=int, default=4, help="prepositions drawn per sample as L_steer positives")
    loss.add_argument("--temperature", type=float, default=0.07)
    loss.add_argument("--importance-sampling", action=argparse.BooleanOptionalAction, default=True,
                      help="relation-focal importance sampling of timesteps (off: uniform)")
    loss.add_argument("--scaled-cosine-alpha", type=float, default=0.5, help="skew of the sampling function, in [0, 1)")
    misc = p.add_argument_group("misc")
    misc.add_argument("--device", default="auto", help="used without accelerate launch: auto, cpu, cuda")
    misc.add_argument("--log-every", type=int, default=10, help="update the progress bar's losses every N steps")
    misc.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate every argument; a mistake is a RelbenchError before any model loads."""
    from relbench.methods.reversion.data import read_exemplar_folder
    from relbench.methods.reversion.losses import RELATION_WORDS
    from relbench.profiles import parse_model_overrides

    args = build_parser().parse_args(argv)
    args.exemplars = args.exemplars.expanduser()
    if args.relation is None:
        args.relation = args.exemplars.name
    if args.resolution is None:
        args.resolution = 64 if args.profile == "tiny" else 512
    if args.output is None:
        args.output = Path("runs") / f"reversion-{args.relation}"
    for name in ("checkpointing_steps", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "log_every"):
        if getattr(args, name) < 1:
            raise RelbenchError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise RelbenchError(f"--checkpoints-total-limit: expected a positive integer, got {args.checkpoints_total_limit}")
    if args.resolution < 16 or args.resolution % 8:
        raise RelbenchError(f"--resolution: expected a multiple of 8 of at least 16, got {args.resolution}")
    for name in ("learning_rate", "denoise_loss_weight", "steer_loss_weight", "adam_weight_decay", "adam_epsilon"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise RelbenchError(f"--{name.replace('_', '-')}: expected a finite number >= 0, got {value}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise RelbenchError(f"--{name.replace('_', '-')}: expected a number in [0, 1), got {getattr(args, name)}")
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
    args.model_overrides = parse_model_overrides(args.model)
    check_output_and_resume(args.output, args.resume_from_checkpoint)
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
    from relbench.methods.reversion.models import MODEL_KEY, load_sd15
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
    """(CPU generator for discrete choices, device generator for noise) of one micro-step."""
    import torch

    value = (seed * 1_000_003 + step * 9_973 + process) % (2**63)
    return torch.Generator().manual_seed(value), torch.Generator(device=device).manual_seed(value)


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
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm.auto import tqdm

    from relbench.methods.reversion.embeds import EMBEDS_NAME, read_learned_embeds, save_learned_embeds

    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    if args.mixed_precision == "fp16" and not on_gpu:
        raise RelbenchError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        cpu=not on_gpu, project_config=ProjectConfiguration(project_dir=str(args.output), automatic_checkpoint_naming=False),
    )
    weight_dtype = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[args.mixed_precision]
    device = accelerator.device
    with accelerator.main_process_first():  # one process fills the HF cache, the others read it
        setup = prepare(args, str(device), weight_dtype)

    learning_rate = args.learning_rate
    if args.scale_lr:  # the authors' --scale_lr
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW([setup.embedding.relation], lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    text_encoder, optimizer = accelerator.prepare(setup.text_encoder, optimizer)

    # Checkpoints hold the relation vector only (not the text encoder), plus optimizer and RNG state.
    def save_hook(_models: list[Any], weights: list[Any], folder: str) -> None:
        if accelerator.is_main_process:
            save_learned_embeds(setup.embedding.relation, args.placeholder_token, Path(folder))
        weights.clear()

    def load_hook(models: list[Any], folder: str) -> None:
        models.clear()
        _, vector = read_learned_embeds(Path(folder) / EMBEDS_NAME)
        with torch.no_grad():
            setup.embedding.relation.copy_(vector.to(setup.embedding.relation.device))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    first_step = resume(accelerator, args.resume_from_checkpoint, args.output, args.quiet)

    args.output.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(first_step, args.max_train_steps), initial=first_step, total=args.max_train_steps,
               desc=f"reversion {args.relation}", disable=args.quiet or not accelerator.is_local_main_process, dynamic_ncols=True)
    sums: dict[str, Any] = {}
    logged = 0
    text_encoder.train()
    for step in range(first_step, args.max_train_steps):
        for micro in range(args.gradient_accumulation_steps):
            choices, noise_generator = step_generators(args.seed, step * args.gradient_accumulation_steps + micro,
                                                       accelerator.process_index, device)
            with accelerator.accumulate(text_encoder):
                loss, logs = training_step(setup, text_encoder, args, choices, noise_generator)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0) + value
            logged += 1
        global_step = step + 1
        if global_step % args.log_every == 0 or global_step == args.max_train_steps:
            # The only device -> host reads of the loop, once per --log-every steps.
            bar.set_postfix({k: f"{float(v) / logged:.4g}" for k, v in sums.items()})
            sums, logged = {}, 0
        bar.update(1)
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            save_checkpoint(accelerator, args.output, global_step, args.checkpoints_total_limit)
    bar.close()

    accelerator.wait_for_everyone()
    path = args.output / EMBEDS_NAME
    if accelerator.is_main_process:
        metadata = {"relbench_relation": args.relation, "relbench_steps": str(args.max_train_steps), "relbench_profile": args.profile}
        path = save_learned_embeds(setup.embedding.relation, args.placeholder_token, args.output, metadata=metadata)
        _write_training_config(args, setup, path, learning_rate, accelerator.num_processes)
    accelerator.end_training()
    return path


def _write_training_config(args: argparse.Namespace, setup: Setup, path: Path, learning_rate: float, processes: int) -> None:
    from relbench.methods.reversion.embeds import file_sha256
    from relbench.provenance import environment

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["effective_learning_rate"] = learning_rate
    config["processes"] = processes
    config["models"] = setup.model_info
    config["embeds_sha256"] = file_sha256(path)
    config["environment"] = environment(str(setup.unet.device))
    (args.output / "training_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "embedding", argv)


if __name__ == "__main__":
    sys.exit(cli())
