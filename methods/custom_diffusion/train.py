"""Train Custom Diffusion on SDXL for one to three subjects: ``relbench train custom-diffusion``.

Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion", CVPR
2023) fine-tunes only the key and value projections of the UNet's cross-attention layers, plus one
new modifier token per subject (``<new1>``, ``<new2>``, ...) in front of its class noun ("photo of
a <new1> cat"), training the subjects jointly. The authors' recipe, from their repository
(``src/diffusers_training_sdxl.py``, the README's multi-concept command) and the diffusers example
they wrote (``examples/custom_diffusion/train_custom_diffusion.py``):

* AdamW (weight decay 1e-2), constant lr 1e-5 scaled by batch x accumulation x processes
  (``--scale_lr``; x2 with prior preservation), batch 2, 250 steps per subject on the authors' two
  GPUs: here one GPU accumulates two micro-batches, so that batches, learning rate and steps are theirs;
* ``--hflip`` and their scale augmentation: an image is resized to a random size between 1/3 and
  1.4 of the resolution, placed on a blank canvas or cropped, the loss masked to where it is, and
  the prompt prefixed with "a far away"/"very small" or "zoomed in"/"close up";
* modifier tokens initialised from rare single tokens (theirs are "ktn+pll+ucd"; "ktn" is two CLIP
  tokens, k + tn, so the first one here is "ohwx");
* SDXL: the token is added to both tokenizers and trained in both text encoders; SDXL's time ids
  are (resolution, resolution, 0, 0, resolution, resolution), as their SDXL script has them;
* no prior preservation by default: the authors regularise with 200 LAION images retrieved with
  clip-retrieval, which needs the network; ``--with-prior-preservation`` uses generated images of
  the class noun instead (their "generated images as regularization" variant).

SDXL's text encoder configs keep CLIP's legacy ``eos_token_id`` (2), with which transformers pools
the second encoder's output at the highest token id: with a modifier token in the prompt, at the
modifier token instead of the end token. That holds in training and in inference alike, as in
the authors' runs (same library code); the tiny profile's configs pool at the end token.

Differences that do not change the math: the new tokens' embeddings are trained as their own
small parameters swapped into the frozen embedding tables (the scripts train the whole table and
zero every other row's gradient; Adam is per element, so only the weight decay of the untouched
rows differs), and the masked loss is the diffusers example's (the SDXL script reduces the loss
to a mean before masking, so its mask has no effect).

Speed: each micro-step's augmentation (PIL), masks and tokenization are made on a worker thread
(``finetune_common.Prefetcher``) two steps ahead, into pinned host memory on a GPU, so the step
only copies them over without waiting; the values are those the step made itself before.

Output, in diffusers' formats: ``pytorch_custom_diffusion_weights.safetensors`` (the layout of
``UNet2DConditionModel.save_attn_procs``: ``<processor>.to_k_custom_diffusion.weight`` ...) and one
``<newN>.safetensors`` per token with its ``clip_l`` and ``clip_g`` embeddings (SDXL's textual
inversion layout, for ``pipe.load_textual_inversion(state["clip_l"], token=...)`` per encoder),
plus ``tokens.json`` and ``training_config.json``. Weights are float32: about 1.4 GB per subject
set for SDXL (341M key/value parameters).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from relbench.atomic import atomic_save_safetensors, atomic_write_text
from relbench.errors import RelbenchError
from relbench.methods.finetune_common import (
    Prefetcher, SubjectTrainingDefaults, add_common_arguments, check_prompt_templates, check_single_tokens, class_folder,
    encode_sdxl_prompts, ensure_class_images, epoch_order, load_rgb, model_ref, place, split_list, to_pixels, tokenize,
    training_sdxl, validate_common_arguments, write_training_config,
)
from relbench.training import (
    ArgumentParser, MicroStep, TrainingJob, make_accelerator, run_cli, run_training, step_seed, weight_dtype_name,
)

DEFAULTS = SubjectTrainingDefaults(
    steps_per_subject=250, learning_rate=1e-5, train_batch_size=2, gradient_accumulation_steps=2,
    adam_weight_decay=1e-2, checkpointing_steps=250, num_class_images=200, min_resolution=64,
)
WEIGHT_NAME = "pytorch_custom_diffusion_weights.safetensors"
TOKENS_FILE = "tokens.json"
MODIFIER_TOKENS = ("<new1>", "<new2>", "<new3>")
INITIALIZER_TOKENS = ("ohwx", "pll", "ucd")
INSTANCE_TEMPLATE = "photo of a {token} {class_noun}"  # the authors' "photo of a <new1> cat"
CLASS_TEMPLATE = "{class_noun}"  # the authors' class prompt: the category name
FREEZE_MODELS = ("crossattn_kv", "crossattn")
EMBEDDING_KEYS = ("clip_l", "clip_g")  # SDXL's first (CLIP ViT-L) and second (OpenCLIP bigG) text encoder


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="relbench train custom-diffusion",
        description="Train Custom Diffusion (cross-attention K/V + a modifier token per subject) on SDXL for one to three subjects.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(p, DEFAULTS)
    cd = p.add_argument_group("Custom Diffusion")
    cd.add_argument("--modifier-tokens", default="+".join(MODIFIER_TOKENS), help="new token of each concept, in --concept order")
    cd.add_argument("--initializer-tokens", default="+".join(INITIALIZER_TOKENS), help="single tokens whose embeddings start the new ones")
    cd.add_argument("--freeze-model", choices=FREEZE_MODELS, default="crossattn_kv",
                    help="crossattn_kv: train cross-attention K/V; crossattn: also its Q and output projection")
    cd.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    cd.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="the authors' random scale augmentation (--noaug turns it off)")
    cd.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True,
                    help="multiply the learning rate by batch x accumulation x processes (x2 with prior preservation)")
    cd.add_argument("--instance-prompt-template", default=INSTANCE_TEMPLATE)
    cd.add_argument("--class-prompt-template", default=CLASS_TEMPLATE, help="prompt of class images (prior preservation)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check every argument; a mistake is a RelbenchError before any model loads."""
    args = build_parser().parse_args(argv)
    validate_common_arguments(args, DEFAULTS)
    n = len(args.concepts)
    modifiers = split_list(args.modifier_tokens, "--modifier-tokens")
    initializers = split_list(args.initializer_tokens, "--initializer-tokens")
    for name, values in (("--modifier-tokens", modifiers), ("--initializer-tokens", initializers)):
        if len(values) < n:
            raise RelbenchError(f"{name}: {n} concepts need {n} tokens, got {len(values)}")
    args.modifier_tokens, args.initializer_tokens = list(modifiers[:n]), list(initializers[:n])
    from relbench.tiny import clip_tokenizer

    tokenizer = clip_tokenizer()  # SDXL's tokenizers share CLIP's vocabulary: checked offline, again after loading
    check_single_tokens([tokenizer], args.initializer_tokens, "--initializer-tokens")
    for token in args.modifier_tokens:
        # A word the tokenizer knows as one token would be shadowed by the new one: refuse it.
        if token in tokenizer.get_vocab() or len(tokenizer.encode(token, add_special_tokens=False)) == 1 or any(c.isspace() for c in token):
            raise RelbenchError(f"--modifier-tokens: {token!r} must be a new word without spaces (e.g. <new1>)")
    check_prompt_templates(args)
    return args


# --------------------------------------------------------------------------------------------
# Model pieces: new token embeddings, Custom Diffusion attention processors, their files


def _new_token_module() -> Any:
    import torch

    class NewTokenEmbeddings(torch.nn.Module):
        """Trainable embeddings of added tokens, swapped into a frozen embedding table's output.

        Attached to the text encoder (so that Accelerate and data parallelism see its parameters)
        and applied by a forward hook on the table: every other row stays exactly as loaded.
        """

        def __init__(self, table: torch.nn.Embedding, token_ids: list[int], initial: torch.Tensor):
            super().__init__()
            self.weight = torch.nn.Parameter(initial.detach().clone().float())
            slots = torch.full((table.num_embeddings,), -1, dtype=torch.long, device=table.weight.device)
            slots[torch.tensor(token_ids, device=table.weight.device)] = torch.arange(len(token_ids), device=table.weight.device)
            self.register_buffer("slots", slots, persistent=False)
            self.handle = table.register_forward_hook(self._swap)

        def _swap(self, _module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            slot = self.slots[inputs[0]]
            new = self.weight[slot.clamp(min=0)].to(output.dtype)
            return torch.where((slot >= 0).unsqueeze(-1), new, output)

    return NewTokenEmbeddings


def add_new_tokens(text_encoder: Any, tokenizer: Any, tokens: list[str], initializers: list[str]) -> Any:
    """Add ``tokens`` to the tokenizer and a trainable embedding for each, started from its initializer's."""
    ids = []
    for token in tokens:
        if tokenizer.add_tokens(token) != 1:
            raise RelbenchError(f"--modifier-tokens: the tokenizer already has {token!r}; pass a new token")
        ids.append(tokenizer.convert_tokens_to_ids(token))
    # mean_resizing=False: the new rows are replaced below (the default estimates a covariance, slowly).
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings()
    init_ids = [tokenizer.encode(t, add_special_tokens=False)[0] for t in initializers]
    module = _new_token_module()(table, ids, table.weight[init_ids])
    text_encoder.add_module("relbench_new_tokens", module)
    return module


def cross_attention_layers(unet: Any) -> dict[str, Any]:
    """Processor name -> Attention module of every cross-attention layer (``attn2``)."""
    return {name: unet.get_submodule(name[: -len(".processor")]) for name in unet.attn_processors if name.endswith("attn2.processor")}


def custom_diffusion_processors(unet: Any, train_q_out: bool) -> dict[str, Any]:
    """A trainable Custom Diffusion processor per cross-attention layer, started from its weights
    (as the authors' script: the model is unchanged until training moves them)."""
    import torch
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    procs = {}
    for name, attn in cross_attention_layers(unet).items():
        proc = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=train_q_out, hidden_size=attn.to_k.out_features,
                                               cross_attention_dim=attn.to_k.in_features)
        weights = {"to_k_custom_diffusion.weight": attn.to_k.weight, "to_v_custom_diffusion.weight": attn.to_v.weight}
        if train_q_out:
            weights.update({"to_q_custom_diffusion.weight": attn.to_q.weight, "to_out_custom_diffusion.0.weight": attn.to_out[0].weight,
                            "to_out_custom_diffusion.0.bias": attn.to_out[0].bias})
        proc.load_state_dict({k: v.detach().float() for k, v in weights.items()})
        procs[name] = proc.to(device=attn.to_k.weight.device, dtype=torch.float32)
    return procs


def install_processors(unet: Any, procs: dict[str, Any]) -> None:
    """Set ``procs`` on their layers; every other layer keeps the processor it has."""
    unet.set_attn_processor({name: procs.get(name, current) for name, current in unet.attn_processors.items()})


def processors_state(procs: dict[str, Any]) -> dict[str, Any]:
    """The layout ``save_attn_procs`` writes: ``<processor name>.<parameter>``."""
    return {f"{name}.{key}": value.detach().float().cpu().contiguous() for name, proc in procs.items() for key, value in proc.state_dict().items()}


def read_weights(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())[:160]})") from exc
    if not state or not all("_custom_diffusion" in key for key in state):
        raise RelbenchError(f"{path}: not Custom Diffusion weights (expected keys like <layer>.processor.to_k_custom_diffusion.weight)")
    return state


def processors_from_state(unet: Any, state: dict[str, Any], where: Path) -> dict[str, Any]:
    """Custom Diffusion processors built from a weights file, for the layers it names.

    diffusers' ``unet.load_attn_procs`` would do this, but in diffusers 0.42 it installs nothing
    unless a pipeline is passed (diffusers issue #9320) and, given one, refuses the safetensors
    files ``save_attn_procs`` writes (they omit the self-attention layers); so the same
    processors (``CustomDiffusionAttnProcessor2_0``) are built here and checked layer by layer.
    """
    import torch
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    layers = set(unet.attn_processors)
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        name, sep, param = key.partition(".processor.")
        if not sep or f"{name}.processor" not in layers:
            raise RelbenchError(f"{where}: weights for a layer this UNet lacks: {key}")
        grouped.setdefault(f"{name}.processor", {})[param] = value
    procs = {}
    for name, values in grouped.items():
        if "to_k_custom_diffusion.weight" not in values:
            raise RelbenchError(f"{where}: {name} lacks to_k_custom_diffusion.weight")
        hidden, cross = values["to_k_custom_diffusion.weight"].shape
        proc = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out="to_q_custom_diffusion.weight" in values,
                                               hidden_size=hidden, cross_attention_dim=cross)
        try:
            proc.load_state_dict(values)
        except RuntimeError as exc:
            raise RelbenchError(f"{where}: {name} does not fit ({' '.join(str(exc).split())[:160]})") from exc
        procs[name] = proc.to(device=unet.device, dtype=torch.float32)
    return procs


def embedding_file(folder: Path, token: str) -> Path:
    return folder / f"{token}.safetensors"


def save_weights(folder: Path, procs: dict[str, Any], tokens: list[str], new_tokens: list[Any]) -> None:
    """Write the processors' weights and each token's embeddings (atomically, file by file)."""
    atomic_save_safetensors(folder / WEIGHT_NAME, processors_state(procs))
    for index, token in enumerate(tokens):
        atomic_save_safetensors(embedding_file(folder, token),
                                {key: module.weight[index].detach().float().cpu().contiguous() for key, module in zip(EMBEDDING_KEYS, new_tokens)})


def read_embeddings(folder: Path, token: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = embedding_file(folder, token)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: cannot read the embeddings of {token} ({' '.join(str(exc).split())[:160]})") from exc
    if set(state) != set(EMBEDDING_KEYS):
        raise RelbenchError(f"{path}: expected the keys {', '.join(EMBEDDING_KEYS)}, found {', '.join(sorted(state))}")
    return state


def load_weights(folder: Path, procs: dict[str, Any], tokens: list[str], new_tokens: list[Any]) -> None:
    """Read saved weights back into training modules (resuming from a checkpoint)."""
    import torch

    state = read_weights(folder / WEIGHT_NAME)
    for name, proc in procs.items():
        prefix = f"{name}."
        proc.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    with torch.no_grad():
        for index, token in enumerate(tokens):
            embeds = read_embeddings(folder, token)
            for key, module in zip(EMBEDDING_KEYS, new_tokens):
                module.weight[index] = embeds[key].to(module.weight.device)


# --------------------------------------------------------------------------------------------
# Data: the authors' augmentation


def augment(image: Any, size: int, factor: int, rng: random.Random, scale_aug: bool, hflip: bool) -> tuple[Any, Any, str]:
    """(pixels (3, size, size), loss mask (size/factor, size/factor), prompt prefix), as the authors'
    dataset: a random flip, then a random square size; smaller images sit on a blank canvas and the
    mask covers them (one latent cell in from their edges), larger ones are cropped."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if hflip and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    scale = size
    if scale_aug:
        scale = rng.randint(size // 3, size) if rng.random() < 0.66 else rng.randint(int(1.2 * size), int(1.4 * size) - 1)
    outer, inner = (scale, size) if scale > size else (size, scale)
    top, left = rng.randint(0, outer - inner), rng.randint(0, outer - inner)
    pixels = np.asarray(image.resize((scale, scale), Image.Resampling.BILINEAR), dtype=np.float32) / 127.5 - 1.0
    cells = size // factor
    if scale > size:
        canvas = pixels[top : top + inner, left : left + inner]
        mask = np.ones((cells, cells), dtype=np.float32)
    else:
        canvas = np.zeros((size, size, 3), dtype=np.float32)
        canvas[top : top + scale, left : left + scale] = pixels
        mask = np.zeros((cells, cells), dtype=np.float32)
        mask[top // factor + 1 : (top + scale) // factor - 1, left // factor + 1 : (left + scale) // factor - 1] = 1.0
    prefix = ""
    if scale < 0.6 * size:
        prefix = rng.choice(["a far away ", "very small "])
    elif scale > size:
        prefix = rng.choice(["zoomed in ", "close up "])
    return torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1), torch.from_numpy(mask), prefix


def class_view(image: Any, size: int, rng: random.Random, hflip: bool) -> Any:
    """A class image as the authors' class transform: flip, shortest side to ``size``, random crop."""
    from PIL import Image, ImageOps

    if hflip and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    return to_pixels(image.crop((left, top, left + size, top + size)))


# --------------------------------------------------------------------------------------------
# Training


def main(argv: list[str] | None = None, sdxl: "tuple[dict[str, Any], str | None] | None" = None) -> Path:
    """Train; returns the output folder (weights, one embedding file per token, tokens.json).

    ``sdxl``: (parts, revision) of an SDXL already in memory to train on instead of loading one
    (``finetune_common.lend_parts``, the method's own); its UNet and text encoders are put back as
    they were when done (``keep_base``)."""
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    with ExitStack() as stack:
        if sdxl is not None:
            stack.callback(keep_base(sdxl[0]))
        return run_training(accelerator, args, training_job(args, accelerator, sdxl, stack),
                            desc=f"custom-diffusion {'+'.join(c.class_noun for c in args.concepts)}")


def keep_base(parts: dict[str, Any]) -> Callable[[], None]:
    """A function that undoes what training adds inside lent SDXL modules: the UNet's attention
    processors go back, the text encoders lose the new-token modules and the new rows of their
    token tables (the kept rows are copied unchanged)."""
    unet, encoders = parts["unet"], [parts["text_encoder"], parts["text_encoder_2"]]
    processors = dict(unet.attn_processors)
    sizes = [encoder.get_input_embeddings().num_embeddings for encoder in encoders]

    def restore() -> None:
        unet.set_attn_processor(dict(processors))
        for encoder, size in zip(encoders, sizes):
            module = encoder._modules.pop("relbench_new_tokens", None)
            if module is not None:
                module.handle.remove()
            if encoder.get_input_embeddings().num_embeddings != size:
                encoder.resize_token_embeddings(size, mean_resizing=False)

    return restore


def training_job(args: argparse.Namespace, accelerator: Any, sdxl: "tuple[dict[str, Any], str | None] | None" = None,
                 stack: ExitStack | None = None) -> TrainingJob:
    """Cross-attention K/V (Q and out with ``--freeze-model crossattn``) and the modifier tokens'
    embeddings, on freshly augmented images every step (made on a worker thread ahead of the step;
    ``stack`` closes it, else it ends with the process)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from relbench.profiles import torch_dtype

    device = accelerator.device
    ref = model_ref(args)
    parts, revision = training_sdxl(args, accelerator, sdxl)
    tokenizers = [parts["tokenizer"], parts["tokenizer_2"]]
    check_single_tokens(tokenizers, args.initializer_tokens, "--initializer-tokens")
    dtype = torch_dtype(weight_dtype_name(accelerator))
    # Text encoders stay float32: their new embeddings train (the authors keep them float32 under fp16).
    place(parts, device, float32=("vae", "text_encoder", "text_encoder_2"))

    prior_images: list[tuple[Any, int]] = []
    class_prompts = [args.class_prompt_template.format(class_noun=c.class_noun) for c in args.concepts]
    if args.with_prior_preservation:
        for index, concept in enumerate(args.concepts):
            with accelerator.main_process_first():
                paths = ensure_class_images(parts, class_folder(args.class_data_dir, concept.class_noun), class_prompts[index],
                                            args.num_class_images, args.class_image_steps, args.resolution, args.seed, device)
            prior_images += [(load_rgb(p), index) for p in paths]

    encoders = [parts["text_encoder"], parts["text_encoder_2"]]
    new_tokens = [add_new_tokens(enc, tok, args.modifier_tokens, args.initializer_tokens) for enc, tok in zip(encoders, tokenizers)]
    unet = parts["unet"]
    procs = custom_diffusion_processors(unet, train_q_out=args.freeze_model == "crossattn")
    install_processors(unet, procs)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for proc in procs.values() for p in proc.parameters()] + [m.weight for m in new_tokens]

    instance_prompts = [args.instance_prompt_template.format(token=t, class_noun=c.class_noun) for t, c in zip(args.modifier_tokens, args.concepts)]
    instances = [(load_rgb(path), index) for index, concept in enumerate(args.concepts) for path in concept.images]
    scale = args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes if args.scale_lr else 1
    if args.scale_lr and args.with_prior_preservation:
        scale *= 2
    base_learning_rate, args.learning_rate = args.learning_rate, args.learning_rate * scale

    vae = parts["vae"]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    stamps = torch.tensor([[args.resolution, args.resolution, 0, 0, args.resolution, args.resolution]], device=device, dtype=dtype)
    batch = args.train_batch_size

    def make_batch(index: int) -> tuple[Any, Any, list[Any]]:
        """Micro-step ``index``'s augmented pixels, loss masks and token ids (both tokenizers), on
        the host (pinned on a GPU): the PIL work, off the training thread."""
        stream = MicroStep(index, accelerator.process_index, step_seed(args.seed, index, accelerator.process_index))
        first = (stream.index * accelerator.num_processes + stream.process) * batch
        # The augmentation's randomness comes from the step's stream too: resumed runs see the same
        # batches. The value read here is the first draw of the step's generator (micro_step draws it
        # again, unread, to keep its stream where it was).
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=stream.generator(device), device=device)))
        pixels, masks, prompts = [], [], []
        for b in range(batch):
            image, concept = instances[epoch_order(args.seed, first + b, len(instances))]
            view, mask, prefix = augment(image, args.resolution, factor, rng, args.augment, args.hflip)
            pixels.append(view)
            masks.append(mask)
            prompts.append(prefix + instance_prompts[concept])
        if prior_images:
            for b in range(batch):
                image, concept = prior_images[epoch_order(args.seed + 1, first + b, len(prior_images))]
                pixels.append(class_view(image, args.resolution, rng, args.hflip))
                masks.append(torch.ones_like(masks[0]))
                prompts.append(class_prompts[concept])
        host = [torch.stack(pixels), torch.stack(masks)[:, None], *(tokenize(t, prompts) for t in tokenizers)]
        if device.type == "cuda":
            host = [t.pin_memory() for t in host]  # so that the step's copies do not wait for the device
        return host[0], host[1], host[2:]

    prefetcher = Prefetcher(make_batch, end=args.max_train_steps * args.gradient_accumulation_steps)
    if stack is not None:
        stack.callback(prefetcher.close)

    def micro_step(modules: list[Any], stream: Any) -> tuple[Any, dict[str, Any]]:
        model, te1, te2 = modules
        generator = stream.generator(device)
        torch.randint(0, 2**62, (1,), generator=generator, device=device)  # make_batch's draw: the rest of the stream as before
        host_pixels, host_mask, ids = prefetcher.get(stream.index)
        with torch.no_grad():
            dist = vae.encode(host_pixels.to(device, vae.dtype, non_blocking=True)).latent_dist
            latents = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator, device=device)) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        embeds, pooled = encode_sdxl_prompts([te1, te2], [t.to(device, non_blocking=True) for t in ids])
        pred = model(noisy.to(dtype), timesteps, embeds.to(dtype),
                     added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": stamps.expand(latents.shape[0], -1)}).sample
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        mask = host_mask.to(device, non_blocking=True)
        # The examples' masked loss: squared error summed over the image's channels and cells, over
        # the mask's cell count (so 4x a per-element mean for 4 latent channels), then the batch mean.
        error = F.mse_loss(pred.float(), target.float(), reduction="none")
        if not prior_images:
            loss = ((error * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3]).clamp(min=1)).mean()
        else:
            error, error_prior = error.chunk(2)
            instance = ((error * mask[:batch]).sum([1, 2, 3]) / mask[:batch].sum([1, 2, 3]).clamp(min=1)).mean()
            loss = instance + args.prior_loss_weight * error_prior.mean()
        return loss, {"loss": loss.detach()}

    def save_final() -> None:
        save_weights(args.output, procs, args.modifier_tokens, new_tokens)
        atomic_write_text(args.output / TOKENS_FILE, json.dumps(
            [{"token": t, "class_noun": c.class_noun, "initializer": i, "instance_prompt": p}
             for t, c, i, p in zip(args.modifier_tokens, args.concepts, args.initializer_tokens, instance_prompts)], indent=2) + "\n")
        write_training_config(args, {"sdxl": {**ref.describe(), "resolved_revision": revision}},
                              {"base_learning_rate": base_learning_rate, "instance_prompts": instance_prompts})

    return TrainingJob(
        modules=[unet, *encoders], params=params, micro_step=micro_step,
        save_weights=lambda folder: save_weights(folder, procs, args.modifier_tokens, new_tokens),
        load_weights=lambda folder: load_weights(folder, procs, args.modifier_tokens, new_tokens),
        save_final=save_final, output=args.output, max_grad_norm=args.max_grad_norm,
    )


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "Custom Diffusion weights", argv)


if __name__ == "__main__":
    sys.exit(cli())
