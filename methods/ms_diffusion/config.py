"""Sizes of the MS-Diffusion adapter.

The defaults are those of the public SDXL checkpoint (``doge1516/MS-Diffusion``, ``ms_adapter.bin``),
read from the authors' inference script and modules:

* the resampler is built with width 1280, depth 4, 64-wide heads x 20, 16 queries per subject,
  feed-forward multiplier 4, and outputs the UNet's cross-attention width (2048 for SDXL);
* its image input is the penultimate hidden state of CLIP ViT-bigG/14: 257 tokens (CLS + 16 x 16
  patches of a 224 px image) of width 1664;
* its queries come from the pooled CLIP-L text embedding (768) of the subject's phrase and an
  8-frequency Fourier embedding of the subject's box;
* the UNet context is the 77 text tokens, then 4 learned "dummy" tokens, then 16 tokens per subject;
* the image branch is added with scale 0.6 (the authors' recommended default).

``tiny()`` matches :func:`relbench.tiny.tiny_sdxl_components` (cross-attention width 64, a 32-wide
text encoder) and the tiny image encoder of :mod:`relbench.methods.ms_diffusion.encoders`
(32 wide, 17 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class MSAdapterConfig:
    cross_attention_dim: int = 2048  # resampler output width; input width of to_k_ip / to_v_ip
    image_embed_dim: int = 1664  # image encoder width (ViT-bigG/14 penultimate hidden states)
    image_tokens: int = 257  # tokens per image from the encoder (CLS + 16x16 patches)
    phrase_embed_dim: int = 768  # pooled CLIP-L text embedding of a subject phrase
    resampler_dim: int = 1280
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    num_queries: int = 16  # resampler output tokens per subject
    ff_mult: int = 4
    fourier_freqs: int = 8  # box embedding: 4 coordinates x (sin, cos) x this many frequencies
    num_dummy_tokens: int = 4
    text_tokens: int = 77  # the context starts with this many text tokens
    scale: float = 0.6  # weight of the image branch: out = text_attn + scale * image_attn

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "scale":
                if value < 0:
                    raise ValueError(f"MSAdapterConfig.scale must be >= 0, got {value}")
            elif not isinstance(value, int) or value <= 0:
                raise ValueError(f"MSAdapterConfig.{f.name} must be a positive integer, got {value!r}")

    @property
    def grounding_dim(self) -> int:
        """Width of a subject's grounding input: phrase embedding + Fourier box embedding."""
        return self.phrase_embed_dim + self.fourier_freqs * 2 * 4

    def context_tokens(self, num_subjects: int) -> int:
        """Length of the UNet context: text + dummy + subject tokens."""
        return self.text_tokens + self.num_dummy_tokens + num_subjects * self.num_queries

    @classmethod
    def sdxl(cls) -> "MSAdapterConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "MSAdapterConfig":
        return cls(
            cross_attention_dim=64, image_embed_dim=32, image_tokens=17, phrase_embed_dim=32,
            resampler_dim=32, depth=2, dim_head=8, heads=4, num_queries=4, ff_mult=2,
        )
