"""Tiny random models for the ``tiny`` profile, and the offline CLIP tokenizer they use.

Everything here is built from configs with seeded random weights: no hub access, no files beyond
what installed packages ship. The tokenizer is the real CLIP BPE (from open-clip-torch's
``bpe_simple_vocab_16e6.txt.gz``) converted to the ``vocab.json`` / ``merges.txt`` pair that
transformers' ``CLIPTokenizer`` reads, so token ids match the pretrained CLIP models exactly.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.atomic import atomic_write_text

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# The BPE file lists merges after a header line; CLIP uses the first 48894 of them
# (49408 ids = 256 bytes x 2 (with and without "</w>") + 48894 merges + 2 special tokens).
N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def _byte_alphabet() -> list[str]:
    """The byte -> printable character table of GPT-2 / CLIP BPE, in id order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in printable] + [table[b] for b in range(256) if b not in printable]


def clip_bpe_files(cache_dir: Path | None = None) -> tuple[Path, Path]:
    """Write (once) and return ``vocab.json`` and ``merges.txt`` derived from open_clip's BPE file."""
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relbench" / "tokenizers" / "clip-bpe-16e6"
    vocab_path, merges_path = cache_dir / "vocab.json", cache_dir / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return vocab_path, merges_path
    # Found through the import system without importing open_clip (which takes seconds).
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("open-clip-torch is not installed: it ships the CLIP BPE vocabulary the tiny profile needs")
    source = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"

    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + N_MERGES]]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"{source}: derived {len(tokens)} tokens, expected {CLIP_VOCAB_SIZE}")
    vocab = {token: i for i, token in enumerate(tokens)}

    # Written atomically, so that concurrent processes never read half a file.
    for path, text in ((vocab_path, json.dumps(vocab)), (merges_path, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")):
        atomic_write_text(path, text)
    return vocab_path, merges_path


@lru_cache(maxsize=1)
def clip_tokenizer() -> "CLIPTokenizer":
    """The real CLIP tokenizer (77 tokens), built offline."""
    from transformers import CLIPTokenizer

    vocab, _ = clip_bpe_files()
    # from_pretrained on the folder reads vocab.json + merges.txt in every transformers version.
    tokenizer = CLIPTokenizer.from_pretrained(
        str(vocab.parent), bos_token=CLIP_BOS, eos_token=CLIP_EOS, unk_token=CLIP_EOS, pad_token=CLIP_EOS,
        model_max_length=77, local_files_only=True,
    )
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"offline CLIP tokenizer has {len(tokenizer)} tokens, expected {CLIP_VOCAB_SIZE}")
    return tokenizer


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Reproducible random initialisation that leaves the global RNG state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_clip_text_config(**overrides: Any) -> dict[str, Any]:
    """A 2-layer, 32-wide CLIP text config over the real 49408-token vocabulary."""
    config = dict(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=CLIP_VOCAB_SIZE - 2, eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1,
        hidden_act="gelu",
    )
    config.update(overrides)
    return config


def tiny_clip(seed: int = 0) -> tuple[Any, Any]:
    """(CLIPModel, CLIPImageProcessor) with random weights: 32 px images, 32-d embeddings."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=tiny_clip_text_config(),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"),
        projection_dim=32,
    )
    with seeded(seed):
        model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, processor


def tiny_dino(seed: int = 0) -> tuple[Any, Any]:
    """(ViTModel, ViTImageProcessor) shaped like DINO ViT-S/16 but 32 px and 32 wide."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                       num_hidden_layers=2, num_attention_heads=4)
    with seeded(seed):
        model = ViTModel(config, add_pooling_layer=False).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    return model, processor


# SDXL's noise schedule (stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json):
# the tiny pipeline uses the real schedule so that step counts and timesteps mean the same thing.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
)


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """SDXL-shaped pipeline components with random weights (UNet ~1M params, 64 px in a second).

    Same structure as SDXL (two CLIP text encoders, the second with a projection; ``text_time``
    added conditioning; cross-attention on concatenated text states) at 32/64 channels, with a
    2-level VAE (latents at 1/2 resolution) and the real CLIP tokenizer for both encoders.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(**tiny_clip_text_config())
    with seeded(seed):
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            # 32 (pooled text_embeds of encoder 2) + 6 time ids x 8 = 80
            projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    tokenizer = clip_tokenizer()
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(), "tokenizer": tokenizer, "tokenizer_2": tokenizer,
        "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    }
