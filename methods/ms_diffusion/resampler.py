"""The grounding resampler of MS-Diffusion: image tokens of one subject -> its context tokens.

A Perceiver resampler in which the latent queries are not free parameters but are predicted from
the subject's grounding information (MS-Diffusion, "grounding" latent initialisation):

1. Grounding input (per subject): the pooled CLIP-L text embedding of the subject phrase (768)
   followed by a Fourier embedding of its box (normalised xyxy). The Fourier embedding uses
   ``F`` frequencies ``100 ** (k / F)`` for ``k = 0..F-1``; for each frequency it lists
   ``sin`` of the four coordinates, then ``cos`` of the four coordinates (feature index
   ``k * 8 + s * 4 + c`` with ``s`` = 0 for sin, 1 for cos, ``c`` the coordinate): 8 x F values,
   64 for F = 8.
2. An MLP ``latent_proj`` (Linear G -> 2G, GELU, Linear 2G -> dim * Q) maps it to ``Q`` latents of
   width ``dim`` (query-major), followed by a LayerNorm ``latent_norm``. For SDXL: G = 832,
   2G = 1664, dim * Q = 1280 * 16.
3. The image tokens are projected by ``proj_in`` (image width -> dim). ``depth`` blocks each apply
   Perceiver attention (queries from the latents; keys/values from the image tokens followed by
   the latents; pre-LayerNorms ``norm1`` on the image tokens and ``norm2`` on the latents; no
   biases) and a pre-LayerNorm feed-forward (``dim -> dim * ff_mult -> dim``, GELU, no biases),
   both residual.
4. ``attention_norm`` (LayerNorm), ``proj_out`` (dim -> cross-attention width) and ``norm_out``
   (LayerNorm) give the subject's ``Q`` context tokens.

Each subject is resampled independently, and the output lists subject 0's ``Q`` tokens, then
subject 1's, and so on. ``grounding_latents`` (1, Q, dim) is the learned stand-in the authors use
for a subject whose grounding is dropped; it is part of the public weights. Module names follow the
public ``image_proj`` state dict exactly (e.g. ``layers.0.0.to_kv.weight``, ``layers.0.1.3.weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relbench.methods.ms_diffusion.config import MSAdapterConfig

FOURIER_TEMPERATURE = 100.0


def fourier_box_embedding(boxes: Tensor, num_freqs: int) -> Tensor:
    """(..., 4) boxes -> (..., 8 * num_freqs): per frequency, sin of xyxy then cos of xyxy."""
    exponents = torch.arange(num_freqs, device=boxes.device, dtype=torch.float32) / num_freqs
    freqs = FOURIER_TEMPERATURE**exponents  # (F,)
    # Computed in float32: sin/cos of 100 * x lose their meaning in half precision.
    angles = freqs[:, None] * boxes.float()[..., None, :]  # (..., F, 4)
    features = torch.stack((angles.sin(), angles.cos()), dim=-2)  # (..., F, 2, 4)
    return features.flatten(-3).to(boxes.dtype)


class PerceiverAttention(nn.Module):
    """Latents attend to [image tokens; latents]; multi-head, no biases."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)  # image tokens
        self.norm2 = nn.LayerNorm(dim)  # latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        # x: (M, L, dim) image tokens; latents: (M, Q, dim)
        x = self.norm1(x)
        latents = self.norm2(latents)
        m, q_len, _ = latents.shape
        q = self.to_q(latents)  # (M, Q, inner)
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)  # (M, L + Q, inner) each
        q, k, v = (t.view(m, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (M, heads, *, dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (M, heads, Q, dh), scale 1/sqrt(dh)
        return self.to_out(out.transpose(1, 2).reshape(m, q_len, -1))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0 (LayerNorm), 1 and 3 (Linear) are the public key names.
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False),
    )


class GroundingResampler(nn.Module):
    def __init__(self, config: MSAdapterConfig):
        super().__init__()
        self.config = config
        dim, q = config.resampler_dim, config.num_queries
        g = config.grounding_dim
        self.grounding_latents = nn.Parameter(torch.randn(1, q, dim) / dim**0.5)
        self.latent_proj = nn.Sequential(nn.Linear(g, g * 2), nn.GELU(), nn.Linear(g * 2, dim * q))
        self.latent_norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(config.image_embed_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, config.dim_head, config.heads), feed_forward(dim, config.ff_mult)])
            for _ in range(config.depth)
        )
        self.attention_norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, config.cross_attention_dim)
        self.norm_out = nn.LayerNorm(config.cross_attention_dim)

    def queries(self, phrase_embeds: Tensor, boxes: Tensor) -> Tensor:
        """(M, phrase_dim), (M, 4) -> (M, Q, dim) latent queries of M subjects."""
        grounding = torch.cat((phrase_embeds, fourier_box_embedding(boxes, self.config.fourier_freqs)), dim=-1)
        latents = self.latent_proj(grounding).view(-1, self.config.num_queries, self.config.resampler_dim)
        return self.latent_norm(latents)

    def forward(self, image_embeds: Tensor, phrase_embeds: Tensor, boxes: Tensor,
                drop_grounding: Tensor | None = None) -> Tensor:
        """(B, N, L, E), (B, N, P), (B, N, 4) [, (B, N) bool] -> (B, N * Q, C).

        ``drop_grounding[b, n]`` replaces subject n's predicted queries by ``grounding_latents``
        (the authors' layout-free mode).
        """
        b, n, length, width = image_embeds.shape
        if phrase_embeds.shape[:2] != (b, n) or boxes.shape != (b, n, 4):
            raise ValueError(
                f"resampler: image_embeds {tuple(image_embeds.shape)}, phrase_embeds {tuple(phrase_embeds.shape)} "
                f"and boxes {tuple(boxes.shape)} must agree on (B, N), boxes being (B, N, 4)"
            )
        latents = self.queries(phrase_embeds.reshape(b * n, -1), boxes.reshape(b * n, 4))  # (B*N, Q, dim)
        if drop_grounding is not None:
            keep = ~drop_grounding.reshape(b * n, 1, 1).to(torch.bool)
            latents = torch.where(keep, latents, self.grounding_latents.to(latents.dtype))
        x = self.proj_in(image_embeds.reshape(b * n, length, width))  # (B*N, L, dim)
        for attention, ff in self.layers:
            latents = attention(x, latents) + latents
            latents = ff(latents) + latents
        out = self.norm_out(self.proj_out(self.attention_norm(latents)))  # (B*N, Q, C)
        return out.reshape(b, n * self.config.num_queries, -1)
